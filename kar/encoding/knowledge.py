"""Turn the knowledge store's answers into the texts the encoder sees, and encode them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

from kar.encoding.vectors import EntityVectors, vectors_frame
from kar.errors import DataValidationError

if TYPE_CHECKING:
    from kar.encoding.encoder import TextEncoder

REQUIRED_COLUMNS = ("entity_type", "entity_id", "answer", "context_text")
ENTITY_TYPES = ("user", "item")


def knowledge_text(entity_type: str, answer: str, context_text: str) -> str:
    """The encoder input, as KAR builds it.

    user: the history the LLM saw plus its reasoning about the user's preferences;
    item: the item's description line plus the facts the LLM stated.
    """
    answer, context = answer.strip(), (context_text or "").strip()
    if entity_type == "user":
        head, label = ("User history: " + context) if context else "", "Preferences: "
    elif entity_type == "item":
        head, label = ("Item: " + context) if context else "", "Facts: "
    else:
        raise DataValidationError(
            f"unknown entity_type {entity_type!r}; expected 'user' or 'item'", field="entity_type"
        )
    return f"{head}\n{label}{answer}" if head else f"{label}{answer}"


def _validate(answers: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in answers.columns]
    if missing:
        raise DataValidationError(
            f"answers frame lacks columns {missing} (has {answers.columns})", field=missing[0]
        )
    frame = answers.select(
        pl.col("entity_type").cast(pl.Utf8),
        pl.col("entity_id").cast(pl.Utf8),
        pl.col("answer").cast(pl.Utf8),
        pl.col("context_text").cast(pl.Utf8).fill_null(""),
    ).with_row_index("row", offset=1)
    checks = (
        ("entity_type", ~pl.col("entity_type").is_in(ENTITY_TYPES), "must be 'user' or 'item'"),
        ("entity_id", pl.col("entity_id").is_null(), "is null"),
        ("answer", pl.col("answer").is_null(), "is null"),
        ("answer", pl.col("answer").str.strip_chars() == "", "is empty"),
    )
    for column, condition, why in checks:
        bad = frame.filter(condition.fill_null(True))
        if bad.height:
            row = bad.row(0, named=True)
            raise DataValidationError(
                f"{column} {why} ({bad.height} rows; first value {row[column]!r})",
                row=int(row["row"]),
                field=column,
            )
    return frame


def encode_knowledge(
    answers: pl.DataFrame,
    encoder: TextEncoder,
    on_duplicate: Literal["error", "last"] = "error",
    progress: bool = False,
) -> EntityVectors:
    """Encode one answer per user and per item into ``EntityVectors``.

    ``answers`` needs entity_type ('user' | 'item'), entity_id, answer, context_text (other
    columns are ignored). Several answers for one entity are an error unless
    ``on_duplicate="last"``, which keeps the last one in frame order.
    """
    frame = _validate(answers)
    dup = frame.filter(pl.struct("entity_type", "entity_id").is_duplicated())
    if dup.height:
        if on_duplicate == "error":
            first = dup.row(0, named=True)
            raise DataValidationError(
                f"{dup.height} rows share an entity, e.g. {first['entity_type']} "
                f"{first['entity_id']!r}; pass one answer per entity or on_duplicate='last'",
                row=int(first["row"]),
                field="entity_id",
            )
        frame = frame.unique(["entity_type", "entity_id"], keep="last", maintain_order=True)
    columns = frame.select("entity_type", "answer", "context_text")
    texts = [knowledge_text(*row) for row in columns.iter_rows()]
    matrix = encoder.encode(texts, progress=progress)
    kinds = frame["entity_type"].to_numpy()
    ids = frame["entity_id"].to_list()

    def part(kind: str) -> pl.DataFrame:
        rows = np.flatnonzero(kinds == kind)
        return vectors_frame([ids[i] for i in rows], matrix[rows])

    return EntityVectors(
        users=part("user"), items=part("item"), dim=encoder.dim, encoder_id=encoder.model_id
    )
