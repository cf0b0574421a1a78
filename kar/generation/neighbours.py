"""Similar users and items, so speculative decoding drafts from their answers first.

DARE/LASER draft from a *personalised* pool: the answers of entities like the one being
asked about. :class:`Neighbours` maps an entity id to its most similar entities (most
similar first) and plugs into :class:`~kar.generation.draft_pool.KnowledgePool`'s
``neighbours``. Two ways to build it, both cosine k-nearest-neighbours (scikit-learn):

- :meth:`Neighbours.from_texts`: TF-IDF over each prompt's ``context_text`` (a user's
  rated titles, an item's title, year and genres); needs nothing but the prompts.
- :meth:`Neighbours.from_interactions`: users by the items they rated, items by the users
  who rated them (collaborative filtering).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kar.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl
    from scipy.sparse import spmatrix

    from kar.records import PromptRecord


@dataclass(frozen=True)
class Neighbours:
    """``entity id -> similar entity ids``, most similar first (``k`` at most each)."""

    table: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __call__(self, entity_id: str) -> Sequence[str]:
        return self.table.get(entity_id, ())

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def from_texts(cls, texts: Mapping[str, str], k: int = 10) -> Neighbours:
        """Nearest entities by TF-IDF cosine of ``texts`` (entity id -> text)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        ids = list(texts)
        if not ids:
            return cls({})
        try:
            vectors = TfidfVectorizer(sublinear_tf=True).fit_transform([texts[i] for i in ids])
        except ValueError:  # no word in any text (empty vocabulary): nothing is similar
            return cls({})
        return cls(_nearest(ids, vectors, k))

    @classmethod
    def from_prompts(cls, prompts: Iterable[PromptRecord], k: int = 10) -> Neighbours:
        """:meth:`from_texts` over the prompts' ``context_text`` (one kind per call)."""
        return cls.from_texts({p.entity_id: p.context_text for p in prompts}, k)

    @classmethod
    def from_interactions(
        cls, interactions: pl.DataFrame, entity: Literal["user", "item"], k: int = 10
    ) -> Neighbours:
        """Nearest users (by the items they rated) or items (by the users who rated them):
        cosine over the binary interaction matrix of ``user_id``/``item_id`` rows."""
        import numpy as np
        from scipy.sparse import csr_matrix

        if entity not in ("user", "item"):
            raise ConfigError(f"entity must be 'user' or 'item', got {entity!r}")
        for column in ("user_id", "item_id"):
            if column not in interactions.columns:
                raise ConfigError(
                    f"interactions need a {column!r} column, found {interactions.columns}"
                )
        key, other = ("user_id", "item_id") if entity == "user" else ("item_id", "user_id")
        pairs = interactions.select(key, other).unique()
        rows, row_index = np.unique(pairs[key].to_numpy(), return_inverse=True)
        _, col_index = np.unique(pairs[other].to_numpy(), return_inverse=True)
        matrix = csr_matrix(
            (np.ones(len(pairs), dtype=np.float32), (row_index, col_index)),
            shape=(len(rows), int(col_index.max()) + 1 if len(pairs) else 0),
        )
        return cls(_nearest([str(r) for r in rows], matrix, k))


def _nearest(ids: list[str], vectors: spmatrix, k: int) -> dict[str, list[str]]:
    """Each row's ``k`` nearest other rows by cosine similarity (zero-similarity left out)."""
    from sklearn.neighbors import NearestNeighbors

    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if len(ids) < 2:
        return {i: [] for i in ids}
    knn = NearestNeighbors(n_neighbors=min(k + 1, len(ids)), metric="cosine", algorithm="brute")
    distances, indices = knn.fit(vectors).kneighbors(vectors)
    table: dict[str, list[str]] = {}
    for row, (dist, idx) in enumerate(zip(distances, indices, strict=True)):
        table[ids[row]] = [ids[j] for d, j in zip(dist, idx, strict=True) if j != row and d < 1.0][
            :k
        ]
    return table
