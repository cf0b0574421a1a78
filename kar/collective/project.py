"""Collective knowledge in a kar project: which questions to ask, and what members get.

``run_generate`` calls :func:`apply_modes` on the project's prompts; ``run_encode`` calls
:func:`member_knowledge` on the store's answers. With every mode ``individual`` both
are no-ops. The clustering is written to ``artifacts/collective/``: membership.parquet
(entity_type, entity_id, cluster, knowledge_source), contexts.parquet (each member's
own context text) and clustering.json (id, settings, sizes, explained variance).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from kar.collective.clusters import Clusters, cluster_entities
from kar.collective.members import member_answers
from kar.prompts.collective import build_cluster_prompts, cluster_entity_id

if TYPE_CHECKING:
    from kar.data.schema import Dataset, Split
    from kar.project import ProjectFolder
    from kar.records import PromptRecord


def modes(project: ProjectFolder) -> dict[str, Any]:
    c = project.settings.generation.collective
    return {"user": c.user, "item": c.item}


def enabled(project: ProjectFolder) -> bool:
    return any(m != "individual" for m in modes(project).values())


def collective_dir(project: ProjectFolder) -> Path:
    return project.artifacts / "collective"


def apply_modes(
    project: ProjectFolder, dataset: Dataset, split: Split, prompts: list[PromptRecord]
) -> list[PromptRecord]:
    """The prompts to ask under the project's modes: individual prompts of the sides in
    ``individual`` or ``both`` mode, plus one prompt per cluster of the other sides."""
    if not enabled(project):
        return prompts
    from kar.prompts import Scenario

    c = project.settings.generation.collective
    clusters = cluster_entities(
        split.history,
        n_components=c.svd_components,
        user_clusters=c.user_clusters,
        item_clusters=c.item_clusters,
        seed=c.seed,
    )
    scenario = Scenario.load(project.settings.scenario, search_dirs=project.prompt_dirs)
    as_of = split.history["timestamp"].max() if split.history.height else None
    cluster_prompts = build_cluster_prompts(
        split.history, dataset.items, scenario, clusters.membership, clusters.clustering, as_of
    )
    active = {side for side, mode in modes(project).items() if mode != "individual"}
    save_clustering(project, clusters, prompts)
    keep = [p for p in prompts if modes(project)[p.entity_type] != "collective"]
    return keep + [p for p in cluster_prompts if p.entity_type in active]


def save_clustering(
    project: ProjectFolder, clusters: Clusters, prompts: list[PromptRecord]
) -> None:
    """Write the membership (members mapped to their cluster's knowledge) and contexts."""
    folder = collective_dir(project)
    folder.mkdir(parents=True, exist_ok=True)
    membership = clusters.membership.with_columns(
        pl.col("cluster")
        .map_elements(lambda k: cluster_entity_id(clusters.clustering, k), return_dtype=pl.Utf8)
        .alias("knowledge_source")
    )
    membership.write_parquet(folder / "membership.parquet")
    pl.DataFrame(
        {
            "entity_type": [p.entity_type for p in prompts],
            "entity_id": [p.entity_id for p in prompts],
            "context_text": [p.context_text for p in prompts],
        },
        schema={"entity_type": pl.Utf8, "entity_id": pl.Utf8, "context_text": pl.Utf8},
    ).unique(["entity_type", "entity_id"], keep="last").write_parquet(folder / "contexts.parquet")
    info = {
        "clustering": clusters.clustering,
        "explained_variance": round(clusters.explained_variance, 4),
        "settings": project.settings.generation.collective.model_dump(),
        "clusters": {t: clusters.n_clusters(t) for t in ("user", "item")},
        "members": {
            t: clusters.membership.filter(pl.col("entity_type") == t).height
            for t in ("user", "item")
        },
    }
    (folder / "clustering.json").write_text(json.dumps(info, indent=2))


def load_clustering(project: ProjectFolder) -> tuple[pl.DataFrame, str, pl.DataFrame] | None:
    """(membership, clustering id, contexts) written by :func:`apply_modes`, or None."""
    folder = collective_dir(project)
    if not (folder / "clustering.json").exists():
        return None
    info = json.loads((folder / "clustering.json").read_text())
    return (
        pl.read_parquet(folder / "membership.parquet"),
        info["clustering"],
        pl.read_parquet(folder / "contexts.parquet"),
    )


def member_knowledge(project: ProjectFolder, answers: pl.DataFrame) -> pl.DataFrame:
    """The store's answers as one row per member entity, under the project's modes."""
    loaded = load_clustering(project) if enabled(project) else None
    membership, clustering, contexts = loaded or (None, None, None)
    return member_answers(answers, membership, clustering, modes(project), contexts)
