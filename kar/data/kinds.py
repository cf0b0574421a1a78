"""The built-in dataset kinds (kar.yaml ``dataset.kind``; :data:`kar.plugins.DATASET_KINDS`).

Each is a loader ``(project) -> Dataset`` over the project's ``dataset`` settings; a kind of
your own is a callable with the same signature named by its dotted path in kar.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kar.data.demo import load_demo
from kar.data.movielens import load_movielens
from kar.data.tables import load_table_dataset

if TYPE_CHECKING:
    from kar.data.schema import Dataset
    from kar.project import ProjectFolder

MOVIELENS_LABEL_THRESHOLD = 4.0


def load_demo_kind(project: ProjectFolder) -> Dataset:
    """``demo``: the synthetic demo dataset in ``dataset.path``."""
    return load_demo(project.path(project.settings.dataset.path))


def load_movielens_kind(project: ProjectFolder) -> Dataset:
    """``movielens``: a MovieLens folder (100K / 1M / latest-small)."""
    ds = project.settings.dataset
    threshold = MOVIELENS_LABEL_THRESHOLD if ds.label_threshold is None else ds.label_threshold
    return load_movielens(
        project.path(ds.path),
        variant=ds.variant,
        label_threshold=threshold,
        rejects_dir=project.rejects_dir,
    )


def table_mapping(project: ProjectFolder) -> dict[str, object]:
    """kar.yaml's dataset section as a :class:`kar.data.ColumnMapping` dict (table kind)."""
    ds = project.settings.dataset
    mapping: dict[str, object] = {**ds.mapping}
    for key in ("item_attributes", "user_attributes"):
        if getattr(ds, key) is not None:
            mapping[key] = list(getattr(ds, key))
    if ds.genre_separator != "|":
        mapping["genre_separator"] = ds.genre_separator
    return mapping


def load_table_kind(project: ProjectFolder) -> Dataset:
    """``table``: your own CSV / TSV / Parquet files with a column mapping."""
    ds = project.settings.dataset
    return load_table_dataset(
        project.path(ds.path),
        items=project.path(ds.items) if ds.items else None,
        users=project.path(ds.users) if ds.users else None,
        mapping=table_mapping(project),
        label_threshold=ds.label_threshold,
        label_column=ds.label_column,
        timestamp_unit=ds.timestamp_unit,
        timestamp_format=ds.timestamp_format,
        rejects_dir=project.rejects_dir,
    )
