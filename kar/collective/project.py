"""Collective knowledge in a kar project: which questions to ask, and what members get.

``run_generate`` calls :func:`apply_modes` on the project's prompts; ``run_encode``
calls :func:`member_knowledge` on the store's answers; ``kar refresh`` runs both on its
subset (the saved clustering kept). With every mode ``individual`` both are no-ops. The
clustering is written to ``artifacts/collective/``: membership.parquet (entity_type,
entity_id, cluster, knowledge_source), contexts.parquet (each member's own context text)
and clustering.json (id, settings, sizes, explained variance).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from kar.collective.clusters import Clusters, cluster_entities
from kar.collective.members import member_answers
from kar.errors import KarError
from kar.prompts.collective import build_cluster_prompts, cluster_entity_id

if TYPE_CHECKING:
    from kar.data.schema import Dataset, Split
    from kar.project import ProjectFolder
    from kar.records import PromptRecord


CONTEXT_SCHEMA = {"entity_type": pl.Utf8, "entity_id": pl.Utf8, "context_text": pl.Utf8}


def modes(project: ProjectFolder) -> dict[str, Any]:
    c = project.settings.generation.collective
    return {"user": c.user, "item": c.item}


def enabled(project: ProjectFolder) -> bool:
    return any(m != "individual" for m in modes(project).values())


def apply_modes(
    project: ProjectFolder,
    dataset: Dataset,
    split: Split,
    prompts: list[PromptRecord],
    *,
    user_ids: Sequence[str] | None = None,
    item_ids: Sequence[str] | None = None,
) -> list[PromptRecord]:
    """The prompts to ask under the project's modes: individual prompts of the sides in
    ``individual`` or ``both`` mode, plus one prompt per cluster of the other sides.

    A full run fits the clustering on ``split.history`` and saves it. A run on a subset
    (``user_ids`` / ``item_ids``: ``kar refresh``) keeps the saved clustering, records the
    subset's new contexts, and asks only the questions of the clusters the subset's members
    belong to, built from ``split.history`` as a full run builds them: a cluster whose
    question did not change is answered from the knowledge store (no LLM call).
    """
    if not enabled(project):
        return prompts
    from kar.prompts import Scenario

    if user_ids is None and item_ids is None:
        clusters = fit_clusters(project, split)
        save_clustering(project, clusters, prompts)
        membership = clusters.membership
    else:
        clusters = saved_clusters(project)
        save_contexts(project, prompts, replace=False)
        membership = clusters_of(clusters.membership, user_ids or (), item_ids or ())
    scenario = Scenario.load(project.settings.scenario, search_dirs=project.prompt_dirs)
    as_of = split.history["timestamp"].max() if split.history.height else None
    cluster_prompts = build_cluster_prompts(
        split.history, dataset.items, scenario, membership, clusters.clustering, as_of
    )
    active = {side for side, mode in modes(project).items() if mode != "individual"}
    keep = [p for p in prompts if modes(project)[p.entity_type] != "collective"]
    return keep + [p for p in cluster_prompts if p.entity_type in active]


def fit_clusters(project: ProjectFolder, split: Split) -> Clusters:
    """Cluster users and items on the history split with kar.yaml's collective settings."""
    c = project.settings.generation.collective
    return cluster_entities(
        split.history,
        n_components=c.svd_components,
        user_clusters=c.user_clusters,
        item_clusters=c.item_clusters,
        seed=c.seed,
    )


def clusters_of(
    membership: pl.DataFrame, user_ids: Sequence[str], item_ids: Sequence[str]
) -> pl.DataFrame:
    """Every member (entity_type, entity_id, cluster) of the clusters that hold one of
    ``user_ids`` (user clusters) or ``item_ids`` (item clusters)."""
    wanted = pl.DataFrame(
        {
            "entity_type": ["user"] * len(user_ids) + ["item"] * len(item_ids),
            "entity_id": [*map(str, user_ids), *map(str, item_ids)],
        },
        schema={"entity_type": pl.Utf8, "entity_id": pl.Utf8},
    )
    members = membership.select("entity_type", "entity_id", "cluster")
    touched = members.join(wanted, on=["entity_type", "entity_id"], how="semi")
    keys = touched.select("entity_type", "cluster").unique()
    return members.join(keys, on=["entity_type", "cluster"], how="semi")


def save_clustering(
    project: ProjectFolder, clusters: Clusters, prompts: list[PromptRecord]
) -> None:
    """Write the membership (members mapped to their cluster's knowledge) and contexts."""
    folder = project.collective_dir
    folder.mkdir(parents=True, exist_ok=True)
    membership = clusters.membership.with_columns(
        pl.col("cluster")
        .map_elements(lambda k: cluster_entity_id(clusters.clustering, k), return_dtype=pl.Utf8)
        .alias("knowledge_source")
    )
    membership.write_parquet(project.membership_path)
    save_contexts(project, prompts, replace=True)
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
    project.clustering_path.write_text(json.dumps(info, indent=2))


def save_contexts(project: ProjectFolder, prompts: list[PromptRecord], *, replace: bool) -> None:
    """Each prompt's entity context (what a member's cluster answer is encoded with) in
    contexts.parquet: the file replaced (a full run) or these entities' rows updated (a
    subset); written to a temporary name and renamed, so a kill leaves the old file."""
    path = project.contexts_path
    frame = pl.DataFrame(
        {
            "entity_type": [p.entity_type for p in prompts],
            "entity_id": [p.entity_id for p in prompts],
            "context_text": [p.context_text for p in prompts],
        },
        schema=CONTEXT_SCHEMA,
    )
    if not replace and path.exists():
        frame = pl.concat([pl.read_parquet(path).select(*CONTEXT_SCHEMA), frame])
    frame = frame.unique(["entity_type", "entity_id"], keep="last", maintain_order=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.write_parquet(tmp)
    tmp.replace(path)


def saved_clusters(project: ProjectFolder) -> Clusters:
    """The clustering the last full ``kar generate`` fitted and saved."""
    loaded = load_clustering(project)
    if loaded is None:
        raise KarError(
            f"collective knowledge is on but {project.collective_dir} holds no clustering: "
            "run `kar generate` first"
        )
    membership, clustering, _ = loaded
    info = json.loads(project.clustering_path.read_text())
    return Clusters(membership, clustering, float(info.get("explained_variance", 0.0)))


def load_clustering(project: ProjectFolder) -> tuple[pl.DataFrame, str, pl.DataFrame] | None:
    """(membership, clustering id, contexts) written by :func:`apply_modes`, or None."""
    if not project.clustering_path.exists():
        return None
    info = json.loads(project.clustering_path.read_text())
    return (
        pl.read_parquet(project.membership_path),
        info["clustering"],
        pl.read_parquet(project.contexts_path),
    )


def member_knowledge(project: ProjectFolder, answers: pl.DataFrame) -> pl.DataFrame:
    """The store's answers as one row per member entity, under the project's modes."""
    loaded = load_clustering(project) if enabled(project) else None
    membership, clustering, contexts = loaded or (None, None, None)
    return member_answers(answers, membership, clustering, modes(project), contexts)
