"""The embedding stage on a project folder: embed, tune, user tower, publish, search.

Artifacts under ``artifacts/embedding/``: ``items/`` (item vectors, EntityVectors format),
``tuned/`` (the tuned embedder, checkpoints while it trains), ``tower/`` (the user tower),
``users/`` (user vectors). The Feast repository is ``embedding_repo/`` (``embedding.yaml``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from kar.embedding.config import EmbeddingSettings
from kar.errors import KarError

if TYPE_CHECKING:
    from kar.data.schema import Dataset, Split
    from kar.encoding import EntityVectors
    from kar.project import ProjectFolder

log = logging.getLogger(__name__)


@dataclass
class EmbeddingProject:
    """A project folder seen by the embedding stage: its settings and artifact paths."""

    folder: ProjectFolder
    settings: EmbeddingSettings

    @classmethod
    def load(cls, root: Path | str) -> EmbeddingProject:
        from kar.project import ProjectFolder

        folder = ProjectFolder.load(root)
        return cls(folder, EmbeddingSettings.load(folder.root))

    @property
    def directory(self) -> Path:
        return self.folder.artifacts / "embedding"

    @property
    def items_dir(self) -> Path:
        return self.directory / "items"

    @property
    def tuned_dir(self) -> Path:
        return self.directory / "tuned"

    @property
    def tower_dir(self) -> Path:
        return self.directory / "tower"

    @property
    def users_dir(self) -> Path:
        return self.directory / "users"

    @property
    def repo(self) -> Path:
        return self.folder.path(self.settings.feast.repo)

    @property
    def feast_project(self) -> str:
        return self.settings.feast.project or f"{self.folder.settings.features.project}_emb"

    def data(self) -> tuple[Dataset, Split]:
        from kar.pipeline import load_data

        return load_data(self.folder)

    def texts(self, dataset: Dataset) -> dict[str, str]:
        """Item texts, with the knowledge store's item facts when enabled and present."""
        from kar.embedding.text import item_facts, item_texts

        facts: dict[str, str] = {}
        url = self.folder.knowledge_store_url
        local = url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file()
        if self.settings.facts and not local:
            from kar.generation import KnowledgeStore

            with KnowledgeStore(url) as store:
                facts = item_facts(store.answers(scenario=self.folder.settings.scenario))
        return item_texts(dataset.items, facts)

    def embedder(self, tuned: bool | None = None) -> Any:
        """The tuned embedder when one exists (or ``tuned=True``), else the base model."""
        from kar.embedding.embedder import ItemEmbedder
        from kar.embedding.tune import META, load_tuned

        s = self.settings
        if tuned or (tuned is None and (self.tuned_dir / META).is_file()):
            return load_tuned(self.tuned_dir)
        return ItemEmbedder(
            s.model, pooling=s.pooling, max_length=s.max_length, batch_size=s.batch_size
        )


def embed_items(
    project: EmbeddingProject, tuned: bool | None = None, progress: bool = True
) -> EntityVectors:
    """Embed every catalogue item; saved to ``artifacts/embedding/items``."""
    from kar.encoding import EntityVectors
    from kar.encoding.vectors import vectors_frame

    dataset, _ = project.data()
    texts = project.texts(dataset)
    ids = sorted(texts)
    embedder = project.embedder(tuned)
    matrix = embedder.embed([texts[i] for i in ids], progress=progress)
    empty = vectors_frame([], np.zeros((0, matrix.shape[1]), dtype=np.float32))
    vectors = EntityVectors(
        users=empty,
        items=vectors_frame(ids, matrix),
        dim=int(matrix.shape[1]),
        encoder_id=embedder.model_id,
    )
    vectors.save(project.items_dir)
    return vectors


def tune(project: EmbeddingProject, progress: bool = True) -> Any:
    """Contrastive tuning on co-occurring training-time pairs; epoch picked on valid Recall@10."""
    from kar.embedding import evaluate as ev
    from kar.embedding.cooccur import cooccurrence_pairs
    from kar.embedding.embedder import ItemEmbedder
    from kar.embedding.tune import TuneConfig, tune_embeddings

    s = project.settings
    dataset, split = project.data()
    texts = project.texts(dataset)
    ids = sorted(texts)
    pairs = cooccurrence_pairs(split, window=s.cooccurrence.window, top_k=s.cooccurrence.top_k)
    valid = ev.next_item_events(split, ids, "valid")

    def score(embed: Any) -> float:
        vectors = embed([texts[i] for i in ids])
        return ev.evaluate(valid, ev.mean_history_scorer(vectors, s.tower.max_len))[0].recall10

    base = ItemEmbedder(
        s.model, pooling=s.pooling, max_length=s.max_length, batch_size=s.batch_size
    )
    t = s.tune
    config = TuneConfig(
        method=t.method,
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        temperature=t.temperature,
        train_layers=t.train_layers,
        checkpoint_every=t.checkpoint_every,
        seed=t.seed,
    )
    return tune_embeddings(
        base,
        texts,
        pairs,
        project.tuned_dir,
        config,
        base_model=s.model,
        evaluate=score if len(valid) else None,
        progress=progress,
    )


def train_users(project: EmbeddingProject, progress: bool = True) -> tuple[Any, EntityVectors]:
    """Train the user tower on the saved item vectors; export one vector per user (read from
    all of the user's interactions, the state to serve from)."""
    from kar.embedding import evaluate as ev
    from kar.embedding.cooccur import training_interactions
    from kar.embedding.tower import TowerConfig, train_user_tower
    from kar.encoding import EntityVectors
    from kar.encoding.vectors import vectors_frame

    if not (project.items_dir / "meta.json").is_file():
        raise KarError("no item embeddings yet: run `kar embed` first")
    items = EntityVectors.load(project.items_dir)
    ids = items.items["entity_id"].to_list()
    matrix, _ = items.matrix("item", ids)
    _, split = project.data()
    index = {item: i for i, item in enumerate(ids)}
    train = training_interactions(split)
    missing = train.filter(~pl.col("item_id").is_in(ids))
    if missing.height:
        raise KarError(f"item {missing['item_id'][0]!r} has no embedding: rerun `kar embed`")
    sequences = [
        np.array([index[i] for i in g["item_id"].to_list()])
        for _, g in train.group_by("user_id", maintain_order=True)
    ]
    valid = ev.next_item_events(split, ids, "valid")
    t = project.settings.tower
    config = TowerConfig(
        max_len=t.max_len,
        d_model=t.d_model,
        layers=t.layers,
        heads=t.heads,
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        temperature=t.temperature,
        seed=t.seed,
    )

    def score(tower: Any) -> float:
        return ev.evaluate(valid, ev.user_vector_scorer(tower.item_vectors, tower.user_vectors))[
            0
        ].recall10

    tower = train_user_tower(
        matrix,
        sequences,
        valid.warm_items,
        config,
        evaluate=score if len(valid) else None,
        progress=progress,
    )
    tower.save(project.tower_dir)
    every = pl.concat([split.history, split.train, split.valid, split.test], how="vertical_relaxed")
    every = every.filter(pl.col("item_id").is_in(ids)).sort("user_id", "timestamp", "item_id")
    users, histories = [], []
    for (user,), g in every.group_by(["user_id"], maintain_order=True):
        users.append(str(user))
        histories.append(np.array([index[i] for i in g["item_id"].to_list()]))
    user_vectors = EntityVectors(
        users=vectors_frame(users, tower.user_vectors(histories)),
        items=vectors_frame([], np.zeros((0, matrix.shape[1]), dtype=np.float32)),
        dim=int(matrix.shape[1]),
        encoder_id=f"user_tower({items.encoder_id})",
    )
    user_vectors.save(project.users_dir)
    return tower, user_vectors


def publish(project: EmbeddingProject) -> Any:
    """Publish the saved item (and user, if any) vectors to the embedding Feast repository."""
    from kar.embedding.feast_repo import init_embedding_repo, publish_embeddings
    from kar.encoding import EntityVectors

    if not (project.items_dir / "meta.json").is_file():
        raise KarError("no item embeddings yet: run `kar embed` first")
    items = EntityVectors.load(project.items_dir)
    users = (
        EntityVectors.load(project.users_dir)
        if (project.users_dir / "meta.json").is_file()
        else None
    )
    dataset, _ = project.data()
    repo = init_embedding_repo(
        project.repo,
        project.feast_project,
        items.dim,
        users.dim if users is not None else None,
        online_store=project.settings.feast.online_store,
        lineage={"embedder": items.encoder_id},
        overwrite=True,
    )
    return publish_embeddings(
        repo,
        items=items.items,
        users=users.users if users is not None else None,
        texts=project.texts(dataset),
    )
