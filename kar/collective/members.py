"""Give members their cluster's knowledge: the answers the encoder sees, per mode.

Modes, per feature (user side, item side):
- ``individual``: each entity's own answer (KAR);
- ``collective``: the cluster's answer, with the member's own context (user history,
  item description line), so members differ at no LLM cost;
- ``both``: the member's own answer, then its cluster's.
The result has one row per member (entity_type, entity_id, answer, context_text, ...):
``kar.encoding.encode_knowledge`` and the adaptor consume it unchanged.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from kar.errors import KarError
from kar.prompts.collective import CLUSTER_PREFIX, cluster_entity_id

Mode = Literal["individual", "collective", "both"]
MODES: tuple[str, ...] = ("individual", "collective", "both")
BOTH_SEPARATOR = "\nShared with similar {noun}: "


def split_cluster_answers(answers: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(member answers, cluster answers) of a knowledge-store answers frame."""
    is_cluster = pl.col("entity_id").str.starts_with(CLUSTER_PREFIX)
    return answers.filter(~is_cluster), answers.filter(is_cluster)


def member_answers(
    answers: pl.DataFrame,
    membership: pl.DataFrame | None,
    clustering: str | None,
    modes: dict[str, Mode],
    contexts: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One answer row per member entity, following ``modes`` ({'user': ..., 'item': ...}).

    ``answers``: the knowledge store's answers (individual and cluster rows).
    ``membership``: entity_type, entity_id, cluster of the clustering ``clustering``.
    ``contexts``: entity_type, entity_id, context_text for members without an individual
    answer (collective mode asks no individual question). Members of no cluster (cold
    start) keep their individual answer if there is one. Adds ``knowledge_source``
    (the cluster's entity id, or the member's own) for lineage.
    """
    individual, clusters = split_cluster_answers(answers)
    individual = individual.with_columns(pl.col("entity_id").alias("knowledge_source"))
    parts = []
    for entity_type in ("user", "item"):
        mode = modes.get(entity_type, "individual")
        if mode not in MODES:
            raise KarError(
                f"knowledge mode for {entity_type}s must be one of {MODES}, got {mode!r}"
            )
        own = individual.filter(pl.col("entity_type") == entity_type)
        if mode == "individual":
            parts.append(own)
            continue
        if membership is None or clustering is None:
            raise KarError(
                f"{mode} knowledge for {entity_type}s needs a clustering: run `kar generate` "
                "with generation.collective set"
            )
        parts.append(
            _with_clusters(entity_type, mode, own, clusters, membership, clustering, contexts)
        )
    return pl.concat(parts, how="diagonal_relaxed") if parts else individual


def _with_clusters(
    entity_type: str,
    mode: Mode,
    own: pl.DataFrame,
    clusters: pl.DataFrame,
    membership: pl.DataFrame,
    clustering: str,
    contexts: pl.DataFrame | None,
) -> pl.DataFrame:
    members = membership.filter(pl.col("entity_type") == entity_type).select(
        "entity_id",
        pl.col("cluster")
        .map_elements(lambda k: cluster_entity_id(clustering, k), return_dtype=pl.Utf8)
        .alias("knowledge_source"),
    )
    cluster_text = clusters.filter(pl.col("entity_type") == entity_type).select(
        pl.col("entity_id").alias("knowledge_source"), pl.col("answer").alias("cluster_answer")
    )
    members = members.join(cluster_text, on="knowledge_source", how="inner")
    if contexts is not None:
        ctx = contexts.filter(pl.col("entity_type") == entity_type).select(
            "entity_id", pl.col("context_text").alias("member_context")
        )
        members = members.join(ctx, on="entity_id", how="left")
    else:
        members = members.with_columns(pl.lit(None, pl.Utf8).alias("member_context"))
    noun = "users" if entity_type == "user" else "items"
    joined = members.join(
        own.select("entity_id", "answer", "context_text"), on="entity_id", how="left"
    )
    if mode == "both":
        joined = joined.filter(pl.col("answer").is_not_null())  # no own answer: not a member row
        answer = (
            pl.col("answer") + pl.lit(BOTH_SEPARATOR.format(noun=noun)) + pl.col("cluster_answer")
        )
    else:
        answer = pl.col("cluster_answer")
    out = joined.select(
        pl.lit(entity_type).alias("entity_type"),
        "entity_id",
        answer.alias("answer"),
        pl.coalesce("context_text", "member_context", pl.lit("")).alias("context_text"),
        "knowledge_source",
    )
    # members of no cluster (or whose cluster has no answer yet) keep their own answer
    rest = own.filter(~pl.col("entity_id").is_in(out["entity_id"].implode()))
    return pl.concat([out, rest.select(out.columns)], how="vertical_relaxed")


def source_counts(rows: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Lineage of member rows (:func:`member_answers`), per entity type: how many took each
    cluster's answer (its entity id), and how many their own, by ``model`` (an LLM's name,
    or ``import:<source>`` for an imported text)."""
    if rows.height == 0:
        return {}
    model = pl.col("model") if "model" in rows.columns else pl.lit(None, pl.Utf8)
    source = pl.col("knowledge_source") if "knowledge_source" in rows.columns else pl.lit(None)
    label = (
        pl.when(source.cast(pl.Utf8).str.starts_with(CLUSTER_PREFIX))
        .then(source.cast(pl.Utf8))
        .otherwise(model.cast(pl.Utf8).fill_null("unknown"))
    )
    counts = rows.group_by("entity_type", label.alias("source")).len().sort("source")
    out: dict[str, dict[str, int]] = {}
    for entity_type, name, n in counts.iter_rows():
        out.setdefault(entity_type, {})[name] = int(n)
    return out
