"""``kar.Project``: the object a user holds. Its methods are the stages, in order.

    import kar

    project = kar.Project.init("kar-demo")  # or kar.Project("kar-demo") for an existing one
    project.generate()  # {"user_preference": GenerationReport, "item_fact": ...}
    project.encode()
    project.train()
    project.publish()
    project.evaluate().markdown.read_text()

Each method delegates to the stage function of :mod:`kar.pipeline` with this object's
:class:`kar.project_data.StageContext` (the project folder, and what is already loaded: the
dataset and its split, the scenario and the knowledge store are read once and kept). Nothing
is printed here (the ``kar`` command prints); heavy packages load in the stage that needs
them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kar.data.demo import DEMO_USERS
from kar.errors import ConfigError
from kar.pipeline import (
    EvaluationReport,
    KindEstimate,
    estimate_generation,
    import_knowledge,
    init_project,
    init_table_project,
    knowledge_ids,
    run_encode,
    run_evaluate,
    run_generate,
    run_publish,
    run_train,
)
from kar.project import ProjectFolder, ProjectSettings
from kar.project_data import StageContext

if TYPE_CHECKING:
    import polars as pl

    from kar.data.inspect import DataSummary
    from kar.data.schema import Dataset, Split
    from kar.embedding.feast_repo import Neighbour
    from kar.embedding.stage import EmbeddingReport
    from kar.encoding import EntityVectors
    from kar.encoding.coverage import Coverage
    from kar.features import KnowledgeServer, PublishReport
    from kar.generation import GenerationReport, KnowledgeStore
    from kar.generation.imports import ImportReport
    from kar.models.train import TrainResult
    from kar.prompts import Scenario
    from kar.refresh import RefreshReport


class Project:
    """A kar project (a folder with ``kar.yaml``) and its stages as methods."""

    def __init__(self, root: str | Path = ".") -> None:
        self.folder = ProjectFolder.load(root)
        self.context = StageContext(self.folder)  # what every stage reads, loaded once
        self.init_notes: list[str] = []  # what `init` found in your tables

    @classmethod
    def init(
        cls,
        root: str | Path,
        *,
        n_users: int = DEMO_USERS,
        seed: int = 0,
        force: bool = False,
        demo: str = "standard",
        interactions: str | Path | None = None,
        items: str | Path | None = None,
        users: str | Path | None = None,
        item_noun: str = "item",
        mapping: dict[str, str] | None = None,
        factors: list[str] | None = None,
    ) -> Project:
        """Create a project in ``root``.

        With ``interactions`` (and optionally ``items`` / ``users``): over your own tables,
        the column mapping proposed from them (``mapping``, kar column -> yours, overrides a
        guess; :attr:`init_notes` says what was found), a scenario scaffold for
        ``item_noun`` and ``factors``, and the data validated once
        (:func:`kar.pipeline.init_table_project`). Without: the demo dataset; ``demo``:
        ``standard``, ``grounded`` or ``oracle`` (:func:`kar.pipeline.init_project`)."""
        if interactions is None:
            init_project(Path(root), n_users=n_users, seed=seed, force=force, demo=demo)
            return cls(root)
        folder, proposal, data = init_table_project(
            Path(root), interactions, items, users, item_noun=item_noun, mapping=mapping,
            factors=factors, force=force,
        )  # fmt: skip
        project = cls(folder.root)
        project.context.keep(data=data)  # validated once already
        project.init_notes = list(proposal.notes)
        return project

    def __repr__(self) -> str:
        return f"kar.Project({str(self.root)!r})"

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def settings(self) -> ProjectSettings:
        return self.folder.settings

    # -- loaded once ---------------------------------------------------------------------

    @property
    def _data(self) -> tuple[Dataset, Split]:
        return self.context.data

    @property
    def dataset(self) -> Dataset:
        """The validated dataset (loaded on first use, then kept)."""
        return self.context.data[0]

    @property
    def split(self) -> Split:
        """The time split of :attr:`dataset` (history / train / valid / test / as_of)."""
        return self.context.data[1]

    @property
    def scenario(self) -> Scenario:
        return self.context.scenario

    @property
    def store(self) -> KnowledgeStore:
        """The knowledge store every LLM answer is kept in."""
        return self.context.store

    def describe_data(self) -> DataSummary:
        """Rows, users, items, time range, labels, split sizes and rejects of the dataset."""
        from kar.data.inspect import summarize_dataset

        return summarize_dataset(self.dataset, self.split)

    def coverage(self, source: str = "encoded") -> Coverage:
        """The share of users, items and train / test rows with knowledge: answers in the
        store (``answers``), encoded vectors (``encoded``) or adapted vectors (``published``)."""
        from kar.encoding.coverage import knowledge_coverage

        users, items = knowledge_ids(self.folder, source, self.store)
        return knowledge_coverage(self.dataset, self.split, users, items)

    def reload(self) -> None:
        """Forget the loaded dataset and scenario (after the files changed on disk)."""
        self.context.forget("data", "scenario")

    # -- stages --------------------------------------------------------------------------

    def generate(
        self,
        *,
        limit: int | None = None,
        sample: int | None = None,
        kinds: set[str] | None = None,
        backend: str | None = None,
        speculative: str | None = None,
        progress: bool = True,
    ) -> dict[str, GenerationReport]:
        """Ask the LLM every prompt not answered yet; one report per knowledge kind.

        ``sample``: a seeded random sample of this many entities per kind (a trial that
        covers the data evenly); ``limit``: at most this many prompts per kind, in build
        order; ``kinds``: only these kinds;
        ``backend`` / ``speculative``: override ``generation.backend`` /
        ``generation.speculative.mode`` for this call (kar.yaml is not changed).
        """
        context = self.context
        if backend is not None or speculative is not None:
            settings = self._generation_override(backend, speculative)
            context = context.on(ProjectFolder(self.root, settings))
        return run_generate(context, limit=limit, sample=sample, kinds=kinds, progress=progress)

    def estimate(
        self,
        *,
        limit: int | None = None,
        sample: int | None = None,
        kinds: set[str] | None = None,
        backend: str | None = None,
    ) -> list[KindEstimate]:
        """What :meth:`generate` would do, per kind (prompts, tokens, time at this machine's
        measured rate), without loading the LLM."""
        context = self.context
        if backend is not None:
            context = context.on(ProjectFolder(self.root, self._generation_override(backend, None)))
        return estimate_generation(context, limit=limit, sample=sample, kinds=kinds)

    def _generation_override(self, backend: str | None, speculative: str | None) -> ProjectSettings:
        gen = self.settings.generation.model_dump()
        if backend is not None:
            gen["backend"] = backend
        if speculative is not None:
            gen["speculative"]["mode"] = speculative
        try:
            return ProjectSettings.model_validate({**self.settings.model_dump(), "generation": gen})
        except ValueError as exc:
            raise ConfigError(f"backend/speculative override: {exc}") from exc

    def encode(self, *, progress: bool = True) -> EntityVectors:
        """Encode every answer into a vector (cached by text hash)."""
        return run_encode(self.context, progress=progress)

    def train(self, *, progress: bool = True) -> TrainResult:
        """Train the hybrid-expert adaptor with the backbone; export one vector per entity."""
        return run_train(self.context, progress=progress)

    def import_knowledge(
        self, path: str | Path, *, source: str | None = None, context: bool = True
    ) -> ImportReport:
        """Your own user / item texts as knowledge (``kar knowledge import``): stored with
        lineage, preferred to the LLM's answer, never asked of the LLM; bad rows go to
        ``artifacts/rejects/`` (:mod:`kar.generation.imports`). ``context``: store each text
        with the item's description line / the user's history, as an LLM answer is."""
        return import_knowledge(self.context, path, source=source, context=context)

    def publish(self, *, require_gain: bool = False) -> PublishReport:
        """Publish the adapted vectors to Feast: offline partition, apply, materialise.
        ``require_gain``: refuse unless knowledge beat no knowledge on validation."""
        return run_publish(self.context, require_gain=require_gain)

    def evaluate(
        self, *, seeds: list[int] | None = None, progress: bool = True
    ) -> EvaluationReport:
        """Each evaluation backbone with and without knowledge over several seeds."""
        return run_evaluate(self.context, seeds=seeds, progress=progress)

    def refresh(self, *, source: str | None = None, progress: bool = False) -> RefreshReport:
        """One incremental refresh from the data on disk (users with new interactions, new
        items); the dataset is read again afterwards."""
        from kar.refresh import refresh

        report = refresh(self.folder, source=source, progress=progress)
        self.reload()
        return report

    # -- embeddings for retrieval (docs/embedding.md) -----------------------------------

    def embed(
        self, *, raw: bool = False, publish: bool = True, progress: bool = True
    ) -> EmbeddingReport:
        """Embed every item with kar.yaml's ``embedding`` model (the tuned one once
        :meth:`embed_tune` ran, unless ``raw``) and publish the vectors to Feast's
        vector-indexed ``item_embedding`` view."""
        from kar.embedding.stage import run_embed

        return run_embed(self.folder, self._data, "items", raw=raw, publish=publish,
                         progress=progress)  # fmt: skip

    def embed_tune(self, *, publish: bool = True, progress: bool = True) -> EmbeddingReport:
        """Contrastive tuning on co-occurring training-time items (resumable), then embed
        every item with the tuned model and publish."""
        from kar.embedding.stage import run_embed

        return run_embed(self.folder, self._data, "tune", publish=publish, progress=progress)

    def embed_users(self, *, publish: bool = True, progress: bool = True) -> EmbeddingReport:
        """Train the user tower on the item embeddings; one vector per user, published."""
        from kar.embedding.stage import run_embed

        return run_embed(self.folder, self._data, "users", publish=publish, progress=progress)

    def embed_said(self, *, publish: bool = True, progress: bool = True) -> EmbeddingReport:
        """SAID: train a projection from each item's ID to soft tokens of the frozen LLM so it
        regenerates the item's text (resumable); the soft tokens become the item vectors,
        published to Feast's ``item_embedding`` view (kar.yaml's ``embedding.said``)."""
        from kar.embedding.stage import run_embed

        return run_embed(self.folder, self._data, "said", publish=publish, progress=progress)

    def similar_items(self, item_id: str, k: int = 10) -> list[Neighbour]:
        """i2i: the ``k`` items nearest to ``item_id``'s embedding, through Feast."""
        from kar.embedding.feast_repo import similar_items
        from kar.embedding.stage import EmbeddingPaths

        return similar_items(EmbeddingPaths.of(self.folder).repo, item_id, k)

    def recommend_items(self, user_id: str, k: int = 10) -> list[Neighbour]:
        """u2i: the ``k`` items nearest to ``user_id``'s user-tower embedding, through Feast."""
        from kar.embedding.feast_repo import recommend_items
        from kar.embedding.stage import EmbeddingPaths

        return recommend_items(EmbeddingPaths.of(self.folder).repo, user_id, k)

    # -- reading the published features --------------------------------------------------

    def training_set(self, entity_df: pl.DataFrame) -> pl.DataFrame:
        """``entity_df`` (user_id, item_id, event_timestamp, ...) joined point-in-time with
        the knowledge vectors (Feast ``get_historical_features``)."""
        from kar.features import training_set

        return training_set(self.folder.feature_repo, entity_df)

    def online(
        self, *, user_feature: str | None = None, item_feature: str | None = None
    ) -> KnowledgeServer:
        """An online reader: ``.get(user_id, item_ids)`` -> :class:`KnowledgeBatch`.
        ``user_feature`` / ``item_feature``: a declared feature ``"name@version"``."""
        from kar.features import KnowledgeServer

        return KnowledgeServer(
            self.folder.feature_repo, user_feature=user_feature, item_feature=item_feature
        )
