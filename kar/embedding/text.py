"""Item text for embedding: "key value" fields (Recformer style), plus LLM item facts."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from kar.errors import DataValidationError

#: Item fields in the order they are written, and the key each is written with.
FIELDS: tuple[tuple[str, str], ...] = (
    ("title", "title"),
    ("year", "year"),
    ("genres", "genres"),
    ("creator", "creator"),
)
MAX_FIELD_CHARS = 300  # a field longer than this is cut (descriptions, LLM facts)


def _clean(value: object) -> str:
    text = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    text = " ".join(text.replace("[ITEM]", " ").replace("[EMB]", " ").split())
    return text[:MAX_FIELD_CHARS]


def item_text(row: Mapping[str, object], facts: str | None = None) -> str:
    """``"title Toy Story year 1995 genres Animation, Comedy"`` (+ ``facts ...``).

    Empty or missing fields are left out; the special embedding tokens are removed from
    the data so a title can never place one.
    """
    parts = []
    for column, key in FIELDS:
        value = row.get(column)
        if value is None or value == [] or (isinstance(value, str) and not value.strip()):
            continue
        parts.append(f"{key} {_clean(value)}")
    if facts and facts.strip():
        parts.append(f"facts {_clean(facts)}")
    return " ".join(parts)


def item_texts(items: pl.DataFrame, facts: Mapping[str, str] | None = None) -> dict[str, str]:
    """item_id -> text for every row of an items frame (the schema of kar.data)."""
    for column in ("item_id", "title"):
        if column not in items.columns:
            raise DataValidationError(f"items frame lacks column {column!r}", field=column)
    facts = facts or {}
    out: dict[str, str] = {}
    for i, row in enumerate(items.iter_rows(named=True)):
        item_id = row["item_id"]
        if item_id is None or not str(item_id).strip():
            raise DataValidationError("item_id is empty", row=i + 1, field="item_id")
        if row["title"] is None or not str(row["title"]).strip():
            raise DataValidationError(f"item {item_id!r} has no title", row=i + 1, field="title")
        out[str(item_id)] = item_text(row, facts.get(str(item_id)))
    return out


def item_facts(answers: pl.DataFrame) -> dict[str, str]:
    """item_id -> the LLM's item-fact answer, from ``KnowledgeStore.answers()``."""
    if answers.height == 0:
        return {}
    items = answers.filter(pl.col("entity_type") == "item")
    return {str(r["entity_id"]): str(r["answer"]) for r in items.iter_rows(named=True)}
