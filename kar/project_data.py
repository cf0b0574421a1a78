"""What a project's stages read: its dataset split by time, its scenario, its knowledge
store (one :class:`StageContext` carries them from stage to stage), and the texts you bring
into the store."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kar.errors import DataValidationError

if TYPE_CHECKING:
    from kar.data.schema import Dataset, Split
    from kar.generation import KnowledgeStore
    from kar.generation.imports import ImportReport
    from kar.project import ProjectFolder
    from kar.prompts import Scenario


@dataclass(frozen=True)
class Subset:
    """The entities a stage runs on instead of all of them (``kar refresh``): these user
    and item ids; user prompts see history strictly before ``as_of`` (None: each user's
    as-of instant of the split)."""

    user_ids: tuple[str, ...] = ()
    item_ids: tuple[str, ...] = ()
    as_of: datetime | None = None


@dataclass
class StageContext:
    """What the stages of one run share, each read once on first use and then kept: the
    project, its dataset and time split, its scenario and its knowledge store; ``subset``:
    the entities the stages run on (``kar refresh``; None: all). Every ``kar.pipeline.run_*``
    takes one (or a bare :class:`~kar.project.ProjectFolder`, :func:`stage_context`);
    :class:`kar.Project` holds one for its stages."""

    project: ProjectFolder
    subset: Subset | None = None
    loaded: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def data(self) -> tuple[Dataset, Split]:
        """(dataset, split): :func:`load_data`, once."""
        if "data" not in self.loaded:
            self.loaded["data"] = load_data(self.project)
        return self.loaded["data"]  # type: ignore[return-value]

    @property
    def scenario(self) -> Scenario:
        """:func:`load_scenario`, once."""
        if "scenario" not in self.loaded:
            self.loaded["scenario"] = load_scenario(self.project)
        return self.loaded["scenario"]  # type: ignore[return-value]

    @property
    def store(self) -> KnowledgeStore:
        """The project's knowledge store, opened once."""
        if "store" not in self.loaded:
            from kar.generation import KnowledgeStore

            self.loaded["store"] = KnowledgeStore(self.project.knowledge_store_url)
        return self.loaded["store"]  # type: ignore[return-value]

    def keep(self, **loaded: object) -> StageContext:
        """Keep already loaded things (``data``, ``scenario``, ``store``); returns self."""
        self.loaded.update({k: v for k, v in loaded.items() if v is not None})
        return self

    def forget(self, *names: str) -> None:
        """Read these again on next use (after the files changed on disk)."""
        for name in names:
            self.loaded.pop(name, None)

    def on(
        self, project: ProjectFolder | None = None, subset: Subset | None = None
    ) -> StageContext:
        """The same loaded things for another settings object of the same folder (a per-call
        override) and / or a subset; the loaded things stay shared."""
        return replace(self, project=project or self.project, subset=subset or self.subset)


def stage_context(stage: StageContext | ProjectFolder) -> StageContext:
    """A stage's argument as a context: a bare project folder gets a fresh one."""
    return stage if isinstance(stage, StageContext) else StageContext(stage)


def load_data(project: ProjectFolder) -> tuple[Dataset, Split]:
    """Load and validate the project's dataset (the loader ``dataset.kind`` names in
    :data:`kar.plugins.DATASET_KINDS`, or a dotted path) and split it by time (KAR's protocol)."""
    from kar.plugins import DATASET_KINDS

    ds_cfg = project.settings.dataset
    dataset = DATASET_KINDS.load(ds_cfg.kind)(project)
    missing = [c for c in ds_cfg.item_text_columns or [] if c not in dataset.items.columns]
    if missing:
        raise DataValidationError(
            f"kar.yaml dataset.item_text_columns names a column the items table lacks; "
            f"columns found: {dataset.items.columns}",
            file=str(dataset.meta.get("files", {}).get("items") or "items table"),
            field=missing[0],
        )
    return dataset, time_split(project, dataset)


def time_split(project: ProjectFolder, dataset: Dataset) -> Split:
    """``dataset`` split by time with kar.yaml's ``split`` settings (KAR's protocol)."""
    from kar.data import make_time_split

    sp = project.settings.split
    return make_time_split(
        dataset,
        history_cap=sp.history_cap,
        history_fraction=sp.history_fraction,
        valid_fraction=sp.valid_fraction,
        test_fraction=sp.test_fraction,
    )


def load_scenario(project: ProjectFolder) -> Scenario:
    """The scenario kar.yaml names (the project's prompts/ first, then the bundled ones)."""
    from kar.prompts import Scenario

    scenario = Scenario.load(project.settings.scenario, search_dirs=project.prompt_dirs)
    columns = project.settings.dataset.item_text_columns
    if columns is not None:  # kar.yaml names the grounding columns
        scenario = scenario.model_copy(update={"item_text_columns": list(columns)})
    return scenario


def import_knowledge(
    stage: StageContext | ProjectFolder,
    path: str | Path,
    *,
    source: str | None = None,
    context: bool = True,
) -> ImportReport:
    """Bring your own user / item texts into the knowledge store (``kar knowledge import``).

    Ids are checked against the project's dataset; bad rows go to ``artifacts/rejects/``.
    Stored with the context an LLM answer has (item: its description line; user: the
    history before their as-of instant; ``context=False``: none;
    :mod:`kar.generation.imports`). A relative ``path`` not found from the working folder
    is taken in the project folder.
    """
    from kar.generation.imports import import_texts

    ctx = stage_context(stage)
    project = ctx.project
    dataset, split = ctx.data
    file = Path(path) if Path(path).exists() else project.path(str(path))
    return import_texts(
        file,
        ctx.store,
        dataset,
        ctx.scenario,
        source=source,
        rejects_dir=project.rejects_dir,
        as_of=split.as_of,
        context=context,
    )
