"""REKI-style collective prompts: one factorised question per cluster of users or items.

A user cluster is described by the items most of its members interacted with; an item
cluster by its most popular members. Titles are cleaned and quoted like every other
catalog value; templates are the scenario's ``collective`` section (sandboxed Jinja2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from kar.prompts.builders import chat_messages, item_titles, require_columns
from kar.prompts.sanitize import quote
from kar.records import KIND_ITEM, KIND_USER, PromptRecord

if TYPE_CHECKING:  # scenario.py imports this module to check its templates
    from kar.prompts.scenario import Scenario

CLUSTER_PREFIX = "cluster:"


def cluster_entity_id(clustering: str, cluster: int) -> str:
    """The knowledge-store entity id of one cluster of a clustering (``cluster:<id>:<k>``)."""
    return f"{CLUSTER_PREFIX}{clustering}:{cluster}"


def is_cluster_id(entity_id: str) -> bool:
    return entity_id.startswith(CLUSTER_PREFIX)


def build_cluster_prompts(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    scenario: Scenario,
    membership: pl.DataFrame,
    clustering: str,
    as_of: datetime | None = None,
) -> list[PromptRecord]:
    """One KIND_USER prompt per user cluster and one KIND_ITEM prompt per item cluster.

    ``membership``: entity_type ('user' | 'item'), entity_id, cluster (int).
    ``interactions`` must already be limited to what the knowledge may see (leakage
    safety: history before the as-of instant). Entity ids are :func:`cluster_entity_id`.
    """
    require_columns(membership, ("entity_type", "entity_id", "cluster"), "cluster membership")
    inter = require_columns(interactions, ("user_id", "item_id"), "interactions table")
    label = inter["label"] if "label" in inter.columns else pl.lit(None, pl.Int8)
    inter = inter.select(
        pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8), label.alias("label")
    )
    shown = scenario.collective_templates.members_shown
    info = item_titles(items, scenario, set(inter["item_id"].unique().to_list()))
    genres = _genres(items)
    system = scenario.render_system()
    version = scenario.collective_version
    records: list[PromptRecord] = []
    for entity_type in ("user", "item"):
        members = membership.filter(pl.col("entity_type") == entity_type)
        key = f"{entity_type}_id"
        joined = inter.join(
            members.select(pl.col("entity_id").alias(key), "cluster"), on=key, how="inner"
        )
        sizes = dict(members.group_by("cluster").len().iter_rows())
        for cluster in sorted(sizes):
            rows = joined.filter(pl.col("cluster") == cluster)
            if entity_type == "user":
                variables = _user_cluster_vars(rows, sizes[cluster], info, scenario, shown)
            else:
                variables = _item_cluster_vars(rows, sizes[cluster], info, genres, shown)
            text_key = "history_text" if entity_type == "user" else "members_text"
            records.append(
                PromptRecord(
                    entity_type=entity_type,
                    entity_id=cluster_entity_id(clustering, cluster),
                    kind=KIND_USER if entity_type == "user" else KIND_ITEM,
                    scenario=scenario.name,
                    prompt_version=version,
                    messages=chat_messages(
                        system, scenario.render_collective(entity_type, variables)
                    ),
                    as_of=as_of,
                    context_text=variables[text_key],
                )
            )
    return records


def _user_cluster_vars(
    rows: pl.DataFrame,
    n_members: int,
    info: Mapping[str, tuple[str, int | None]],
    scenario: Scenario,
    shown: int,
) -> dict[str, Any]:
    """The items most members of a user cluster interacted with (ties by item id)."""
    top = (
        rows.group_by("item_id")
        .agg(pl.col("user_id").n_unique().alias("watched"), pl.col("label").sum().alias("liked"))
        .sort(["watched", "item_id"], descending=[True, False])
        .head(shown)
    )
    history = []
    for item_id, watched, liked in top.iter_rows():
        title, year = info.get(item_id) or (quote(f"{scenario.item_noun} {item_id}"), None)
        line = f"- {title}" + (f" ({year})" if year is not None else "")
        line += f", watched by {watched} of {n_members}, liked by {int(liked or 0)}"
        history.append(
            {"title": title, "year": year, "watched": watched, "liked": liked, "line": line}
        )
    text = "\n".join(h["line"] for h in history) or scenario.empty_history_text
    return {"n_members": n_members, "history": history, "history_text": text}


def _item_cluster_vars(
    rows: pl.DataFrame,
    n_members: int,
    info: Mapping[str, tuple[str, int | None]],
    genres: Mapping[str, Sequence[str]],
    shown: int,
) -> dict[str, Any]:
    """The most popular members of an item cluster, and their most common genres."""
    top = (
        rows.group_by("item_id")
        .agg(pl.len().alias("n"))
        .sort(["n", "item_id"], descending=[True, False])
        .head(shown)["item_id"]
        .to_list()
    )
    members = []
    for item_id in top:
        title, year = info.get(item_id) or (quote(f"item {item_id}"), None)
        members.append(
            {"title": title, "year": year, "line": f"- {title}" + (f" ({year})" if year else "")}
        )
    counts: dict[str, int] = {}
    for item_id in top:
        for genre in genres.get(item_id, ()):
            counts[genre] = counts.get(genre, 0) + 1
    common = sorted(counts, key=lambda g: (-counts[g], g))[:3]
    return {
        "n_members": n_members,
        "members": members,
        "members_text": "\n".join(m["line"] for m in members),
        "genres_text": ", ".join(quote(g) for g in common),
    }


def _genres(items: pl.DataFrame) -> dict[str, list[str]]:
    if "genres" not in items.columns:
        return {}
    return {
        str(item_id): list(g or [])
        for item_id, g in items.select(pl.col("item_id").cast(pl.Utf8), "genres").iter_rows()
    }


def sample_collective_vars(scenario: Scenario, entity_type: str) -> dict[str, Any]:
    """Representative collective-template variables (to check a scenario at load time)."""
    info = {"1": (quote("Sample Title"), 1999), "2": (quote("Another Title"), None)}
    rows = pl.DataFrame(
        {"user_id": ["a", "b"], "item_id": ["1", "2"], "label": [1, 0]},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "label": pl.Int8},
    )
    if entity_type == "user":
        return _user_cluster_vars(rows, 2, info, scenario, 10)
    return _item_cluster_vars(rows, 2, info, {"1": ["Drama"]}, 10)
