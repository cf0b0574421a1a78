"""The embedding stage of a project: embed items, tune, SAID, the user tower, publish to Feast.

``kar.Project.embed()`` / ``embed_tune()`` / ``embed_said()`` / ``embed_users()`` call
:func:`run_embed` with the project's loaded dataset and split; the settings are kar.yaml's
``embedding:`` section.
Artifacts under ``artifacts/embedding/``: ``items/`` (item vectors, EntityVectors format),
``tuned/`` (the tuned embedder, checkpoints while it trains), ``said/`` (SAID's checkpoint),
``tower/`` (the user tower), ``users/`` (user vectors); the Feast repository is
``embedding.feast.repo``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from kar.errors import KarError

if TYPE_CHECKING:
    from kar.data.schema import Dataset, Split
    from kar.embedding.embedder import ItemEmbedder
    from kar.embedding.feast_repo import EmbeddingPublishReport
    from kar.embedding.said import SAIDResult
    from kar.embedding.tower import UserTower
    from kar.embedding.tune import TuneResult
    from kar.encoding import EntityVectors
    from kar.project import ProjectFolder

Step = Literal["items", "tune", "users", "said"]
META_FILE = "meta.json"  # what EntityVectors.save writes: the vectors are there


@dataclass(frozen=True)
class EmbeddingPaths:
    """Where a project's embedding stage keeps its artifacts and its Feast repository."""

    directory: Path
    repo: Path
    feast_project: str

    @classmethod
    def of(cls, folder: ProjectFolder) -> EmbeddingPaths:
        feast = folder.settings.embedding.feast
        project = feast.project or f"{folder.settings.features.project}_emb"
        return cls(folder.embedding_dir, folder.path(feast.repo), project)

    @property
    def items(self) -> Path:
        return self.directory / "items"

    @property
    def tuned(self) -> Path:
        return self.directory / "tuned"

    @property
    def said(self) -> Path:
        return self.directory / "said"

    @property
    def tower(self) -> Path:
        return self.directory / "tower"

    @property
    def users(self) -> Path:
        return self.directory / "users"


@dataclass
class EmbeddingReport:
    """What one embedding call did; a step it did not run is None."""

    paths: EmbeddingPaths
    items: EntityVectors | None = None  # the item vectors embedded
    users: EntityVectors | None = None  # the user vectors of the tower
    tuning: TuneResult | None = None
    said: SAIDResult | None = None  # SAID's training (its vectors are ``items``)
    tower: UserTower | None = None
    published: EmbeddingPublishReport | None = None


def item_texts_of(folder: ProjectFolder, dataset: Dataset) -> dict[str, str]:
    """Item texts, with the knowledge store's item facts when enabled and present (a local
    store that does not exist yet is not created)."""
    from kar.embedding.text import item_facts, item_texts

    facts: dict[str, str] = {}
    url = folder.knowledge_store_url
    local = url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file()
    if folder.settings.embedding.facts and not local:
        from kar.generation import KnowledgeStore

        with KnowledgeStore(url) as store:
            facts = item_facts(store.answers(scenario=folder.settings.scenario))
    return item_texts(dataset.items, facts)


def base_embedder(folder: ProjectFolder, cache: bool = True) -> ItemEmbedder:
    """The untuned item embedder of kar.yaml, its vectors cached in the project's vector
    cache (the encoding stage's, keyed by model id and text hash)."""
    from kar.embedding.embedder import ItemEmbedder
    from kar.encoding import VectorCache

    s = folder.settings.embedding
    return ItemEmbedder(
        s.model,
        pooling=s.pooling,
        max_length=s.max_length,
        batch_size=s.batch_size,
        cache=VectorCache(folder.vector_cache_path) if cache else None,
    )


def make_embedder(folder: ProjectFolder, tuned: bool | None = None) -> Any:
    """The tuned embedder when one exists (or ``tuned=True``), else the base model."""
    from kar.embedding.tune import META, load_tuned

    paths = EmbeddingPaths.of(folder)
    if tuned or (tuned is None and (paths.tuned / META).is_file()):
        from kar.encoding import VectorCache

        return load_tuned(paths.tuned, cache=VectorCache(folder.vector_cache_path))
    return base_embedder(folder)


def embed_items(
    folder: ProjectFolder,
    data: tuple[Dataset, Split],
    *,
    tuned: bool | None = None,
    progress: bool = True,
) -> EntityVectors:
    """Embed every catalogue item; saved to ``artifacts/embedding/items``."""
    from kar.encoding import EntityVectors
    from kar.encoding.vectors import vectors_frame

    texts = item_texts_of(folder, data[0])
    ids = sorted(texts)
    embedder = make_embedder(folder, tuned)
    matrix = embedder.embed([texts[i] for i in ids], progress=progress)
    vectors = EntityVectors(
        users=vectors_frame([], np.zeros((0, matrix.shape[1]), dtype=np.float32)),
        items=vectors_frame(ids, matrix),
        dim=int(matrix.shape[1]),
        encoder_id=embedder.model_id,
    )
    vectors.save(EmbeddingPaths.of(folder).items)
    return vectors


def tune_items(
    folder: ProjectFolder, data: tuple[Dataset, Split], *, progress: bool = True
) -> TuneResult:
    """Contrastive tuning on co-occurring training-time pairs; epoch picked on valid Recall@10."""
    from kar.embedding import evaluate as ev
    from kar.embedding.cooccur import cooccurrence_pairs
    from kar.embedding.tune import TuneConfig, tune_embeddings

    s = folder.settings.embedding
    dataset, split = data
    texts = item_texts_of(folder, dataset)
    ids = sorted(texts)
    pairs = cooccurrence_pairs(split, window=s.cooccurrence.window, top_k=s.cooccurrence.top_k)
    valid = ev.next_item_events(split, ids, "valid")

    def score(embed: Any) -> float:
        vectors = embed([texts[i] for i in ids])
        return ev.evaluate(valid, ev.mean_history_scorer(vectors, s.tower.max_len))[0].recall10

    return tune_embeddings(
        base_embedder(folder, cache=s.tune.method != "encoder"),
        texts,
        pairs,
        EmbeddingPaths.of(folder).tuned,
        TuneConfig(**s.tune.model_dump()),
        base_model=s.model,
        evaluate=score if len(valid) else None,
        progress=progress,
    )


def said_items(
    folder: ProjectFolder, data: tuple[Dataset, Split], *, progress: bool = True
) -> tuple[SAIDResult, EntityVectors]:
    """Train SAID's ID -> soft-token projection on every item's text with the LLM frozen
    (resumable: ``said/checkpoint.pt``); its vectors become the item vectors (``items/``)."""
    from kar.embedding.said import SAIDConfig, fit_said
    from kar.encoding import EntityVectors
    from kar.encoding.vectors import vectors_frame

    settings = folder.settings.embedding.said
    texts = item_texts_of(folder, data[0])
    ids = sorted(texts)
    paths = EmbeddingPaths.of(folder)
    result = fit_said(
        [texts[i] for i in ids],
        SAIDConfig(**settings.model_dump()),
        paths.said / "checkpoint.pt",
        progress=progress,
    )
    matrix = result.vectors
    digest = hashlib.sha256(matrix.tobytes()).hexdigest()[:8]  # the id changes with the vectors
    vectors = EntityVectors(
        users=vectors_frame([], np.zeros((0, matrix.shape[1]), dtype=np.float32)),
        items=vectors_frame(ids, matrix),
        dim=int(matrix.shape[1]),
        encoder_id=f"said({result.model_id},k={settings.soft_tokens},{settings.output})@{digest}",
    )
    vectors.save(paths.items)
    return result, vectors


def user_sequences(
    frame: pl.DataFrame, index: dict[str, int]
) -> tuple[list[str], list[np.ndarray]]:
    """(user ids, each user's item rows in frame order) of an interactions frame sorted by
    user and time (e.g. :func:`kar.embedding.cooccur.training_interactions`); ``index`` maps
    an item id to its row in the catalogue. These are the sequences the user tower and
    SASRec (:mod:`kar.embedding.sasrec`) train on."""
    users, rows = [], []
    for (user,), g in frame.group_by(["user_id"], maintain_order=True):
        users.append(str(user))
        rows.append(np.array([index[i] for i in g["item_id"].to_list()]))
    return users, rows


def train_users(
    folder: ProjectFolder, data: tuple[Dataset, Split], *, progress: bool = True
) -> tuple[UserTower, EntityVectors]:
    """Train the user tower on the saved item vectors; export one vector per user (read from
    all of the user's interactions, the state to serve from)."""
    from kar.embedding import evaluate as ev
    from kar.embedding.cooccur import training_interactions
    from kar.embedding.tower import TowerConfig, train_user_tower
    from kar.encoding import EntityVectors
    from kar.encoding.vectors import vectors_frame

    paths = EmbeddingPaths.of(folder)
    items = _saved_items(paths)
    ids = items.items["entity_id"].to_list()
    matrix, _ = items.matrix("item", ids)
    split = data[1]
    index = {item: i for i, item in enumerate(ids)}
    train = training_interactions(split)
    missing = train.filter(~pl.col("item_id").is_in(ids))
    if missing.height:
        raise KarError(f"item {missing['item_id'][0]!r} has no embedding: rerun `kar embed`")
    valid = ev.next_item_events(split, ids, "valid")

    def score(tower: Any) -> float:
        scorer = ev.user_vector_scorer(tower.item_vectors, tower.user_vectors)
        return ev.evaluate(valid, scorer)[0].recall10

    tower = train_user_tower(
        matrix,
        user_sequences(train, index)[1],
        valid.warm_items,
        TowerConfig(**folder.settings.embedding.tower.model_dump()),
        evaluate=score if len(valid) else None,
        progress=progress,
    )
    tower.save(paths.tower)
    every = pl.concat([split.history, split.train, split.valid, split.test], how="vertical_relaxed")
    every = every.filter(pl.col("item_id").is_in(ids)).sort("user_id", "timestamp", "item_id")
    users, histories = user_sequences(every, index)
    user_vectors = EntityVectors(
        users=vectors_frame(users, tower.user_vectors(histories)),
        items=vectors_frame([], np.zeros((0, matrix.shape[1]), dtype=np.float32)),
        dim=int(matrix.shape[1]),
        encoder_id=f"user_tower({items.encoder_id})",
    )
    user_vectors.save(paths.users)
    return tower, user_vectors


def _saved_items(paths: EmbeddingPaths) -> EntityVectors:
    from kar.encoding import EntityVectors

    if not (paths.items / META_FILE).is_file():
        raise KarError("no item embeddings yet: run `kar embed` first")
    return EntityVectors.load(paths.items)


def publish_vectors(folder: ProjectFolder, dataset: Dataset) -> EmbeddingPublishReport:
    """Publish the saved item (and user, if any) vectors to the embedding Feast repository."""
    from kar.embedding.feast_repo import init_embedding_repo, publish_embeddings
    from kar.encoding import EntityVectors

    paths = EmbeddingPaths.of(folder)
    items = _saved_items(paths)
    users = EntityVectors.load(paths.users) if (paths.users / META_FILE).is_file() else None
    if users is not None and users.encoder_id != f"user_tower({items.encoder_id})":
        users = None  # a tower over other item vectors (before `kar embed said` / tune)
    repo = init_embedding_repo(
        paths.repo,
        paths.feast_project,
        items.dim,
        users.dim if users is not None else None,
        online_store=folder.settings.embedding.feast.online_store,
        lineage={"embedder": items.encoder_id},
        overwrite=True,
    )
    return publish_embeddings(
        repo,
        items=items.items,
        users=users.users if users is not None else None,
        texts=item_texts_of(folder, dataset),
    )


def run_embed(
    folder: ProjectFolder,
    data: tuple[Dataset, Split],
    step: Step = "items",
    *,
    raw: bool = False,
    publish: bool = True,
    progress: bool = True,
) -> EmbeddingReport:
    """One embedding step, then (``publish``) the vectors to Feast.

    ``items``: embed every item (the tuned model if there is one, unless ``raw``);
    ``tune``: contrastive tuning, then re-embed with the tuned model; ``users``: the user
    tower and one vector per user; ``said``: SAID's projection, its vectors the item vectors.
    User vectors of a tower over other item vectors than the saved ones are not published.
    """
    if step not in ("items", "tune", "users", "said"):
        raise KarError(f"unknown embedding step {step!r}; expected items | tune | users | said")
    report = EmbeddingReport(EmbeddingPaths.of(folder))
    if step == "users":
        report.tower, report.users = train_users(folder, data, progress=progress)
    elif step == "said":
        report.said, report.items = said_items(folder, data, progress=progress)
    else:
        if step == "tune":
            report.tuning = tune_items(folder, data, progress=progress)
        tuned = False if raw and step == "items" else None
        report.items = embed_items(folder, data, tuned=tuned, progress=progress)
    if publish:
        report.published = publish_vectors(folder, data[0])
    return report
