"""``kar.Project``: the object a user holds. Its methods are the stages, in order.

    import kar

    project = kar.Project.init("kar-demo")  # or kar.Project("kar-demo") for an existing one
    project.generate()  # {"user_preference": GenerationReport, "item_fact": ...}
    project.encode()
    project.train()
    project.publish()
    project.evaluate().markdown.read_text()

Each method delegates to the stage function of :mod:`kar.pipeline` over the project folder
(:class:`kar.project.ProjectFolder`) and passes it what this object has already loaded: the
dataset and its split, the scenario and the knowledge store are read once and kept. Nothing
is printed here (the ``kar`` command prints); heavy packages load in the stage that needs
them.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from kar.data.demo import DEMO_USERS
from kar.errors import ConfigError
from kar.pipeline import (
    EvaluationReport,
    import_knowledge,
    init_project,
    load_data,
    load_scenario,
    run_encode,
    run_evaluate,
    run_generate,
    run_publish,
    run_train,
)
from kar.project import ProjectFolder, ProjectSettings

if TYPE_CHECKING:
    import polars as pl

    from kar.data.schema import Dataset, Split
    from kar.encoding import EntityVectors
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

    @classmethod
    def init(
        cls,
        root: str | Path,
        *,
        n_users: int = DEMO_USERS,
        seed: int = 0,
        force: bool = False,
        demo: str = "standard",
    ) -> Project:
        """Create a project in ``root``: demo dataset, scenarios, adaptor configs, Feast repo.
        ``demo``: ``standard``, ``grounded`` or ``oracle`` (:func:`kar.pipeline.init_project`)."""
        init_project(Path(root), n_users=n_users, seed=seed, force=force, demo=demo)
        return cls(root)

    def __repr__(self) -> str:
        return f"kar.Project({str(self.root)!r})"

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def settings(self) -> ProjectSettings:
        return self.folder.settings

    # -- loaded once ---------------------------------------------------------------------

    @cached_property
    def _data(self) -> tuple[Dataset, Split]:
        return load_data(self.folder)

    @property
    def dataset(self) -> Dataset:
        """The validated dataset (loaded on first use, then kept)."""
        return self._data[0]

    @property
    def split(self) -> Split:
        """The time split of :attr:`dataset` (history / train / valid / test / as_of)."""
        return self._data[1]

    @cached_property
    def scenario(self) -> Scenario:
        return load_scenario(self.folder)

    @cached_property
    def store(self) -> KnowledgeStore:
        """The knowledge store every LLM answer is kept in."""
        from kar.generation import KnowledgeStore

        return KnowledgeStore(self.folder.knowledge_store_url)

    def reload(self) -> None:
        """Forget the loaded dataset and scenario (after the files changed on disk)."""
        for name in ("_data", "scenario"):
            self.__dict__.pop(name, None)

    # -- stages --------------------------------------------------------------------------

    def generate(
        self,
        *,
        limit: int | None = None,
        kinds: set[str] | None = None,
        backend: str | None = None,
        speculative: str | None = None,
        progress: bool = True,
    ) -> dict[str, GenerationReport]:
        """Ask the LLM every prompt not answered yet; one report per knowledge kind.

        ``limit``: at most this many prompts per kind; ``kinds``: only these kinds;
        ``backend`` / ``speculative``: override ``generation.backend`` /
        ``generation.speculative.mode`` for this call (kar.yaml is not changed).
        """
        folder = self.folder
        if backend is not None or speculative is not None:
            folder = ProjectFolder(self.root, self._generation_override(backend, speculative))
        return run_generate(
            folder,
            limit=limit,
            kinds=kinds,
            progress=progress,
            data=self._data,
            scenario=self.scenario,
            store=self.store,
        )

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
        return run_encode(self.folder, progress=progress, store=self.store)

    def train(self, *, progress: bool = True) -> TrainResult:
        """Train the hybrid-expert adaptor with the backbone; export one vector per entity."""
        return run_train(self.folder, progress=progress, data=self._data)

    def import_knowledge(
        self, path: str | Path, *, source: str | None = None, context: bool = True
    ) -> ImportReport:
        """Your own user / item texts as knowledge (``kar knowledge import``): stored with
        lineage, preferred to the LLM's answer, never asked of the LLM; bad rows go to
        ``artifacts/rejects/`` (:mod:`kar.generation.imports`). ``context``: store each text
        with the item's description line / the user's history, as an LLM answer is."""
        return import_knowledge(
            self.folder, path, source=source, context=context, data=self._data,
            scenario=self.scenario, store=self.store,
        )  # fmt: skip

    def publish(self) -> PublishReport:
        """Publish the adapted vectors to Feast: offline partition, apply, materialise."""
        return run_publish(self.folder, data=self._data, store=self.store)

    def evaluate(
        self, *, seeds: list[int] | None = None, progress: bool = True
    ) -> EvaluationReport:
        """Each evaluation backbone with and without knowledge over several seeds."""
        return run_evaluate(self.folder, seeds=seeds, progress=progress, data=self._data)

    def refresh(self, *, source: str | None = None, progress: bool = False) -> RefreshReport:
        """One incremental refresh from the data on disk (users with new interactions, new
        items); the dataset is read again afterwards."""
        from kar.refresh import refresh

        report = refresh(self.folder, source=source, progress=progress)
        self.reload()
        return report

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
