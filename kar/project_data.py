"""What a project's stages read: its dataset split by time, its scenario, and the texts
you bring into its knowledge store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kar.errors import DataValidationError

if TYPE_CHECKING:
    from kar.data.schema import Dataset, Split
    from kar.generation import KnowledgeStore
    from kar.generation.imports import ImportReport
    from kar.project import ProjectFolder
    from kar.prompts import Scenario


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
    project: ProjectFolder,
    path: str | Path,
    *,
    source: str | None = None,
    context: bool = True,
    data: tuple[Dataset, Split] | None = None,
    scenario: Scenario | None = None,
    store: KnowledgeStore | None = None,
) -> ImportReport:
    """Bring your own user / item texts into the knowledge store (``kar knowledge import``).

    Ids are checked against the project's dataset; bad rows go to ``artifacts/rejects/``.
    Stored with the context an LLM answer has (item: its description line; user: the
    history before their as-of instant; ``context=False``: none;
    :mod:`kar.generation.imports`). ``data``,
    ``scenario``, ``store``: already loaded (:class:`kar.Project`); loaded here when None.
    A relative ``path`` not found from the working folder is taken in the project folder.
    """
    from kar.generation import KnowledgeStore
    from kar.generation.imports import import_texts

    dataset, split = data or load_data(project)
    file = Path(path) if Path(path).exists() else project.path(str(path))
    return import_texts(
        file,
        store or KnowledgeStore(project.knowledge_store_url),
        dataset,
        scenario or load_scenario(project),
        source=source,
        rejects_dir=project.rejects_dir,
        as_of=split.as_of,
        context=context,
    )
