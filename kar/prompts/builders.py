"""Build KAR's factorised prompts: one user-preference question per user (from history
strictly before their as-of instant) and one item-fact question per item."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from kar.data.schema import TIMESTAMP, Dataset
from kar.errors import DataValidationError
from kar.prompts.sanitize import clean_passage, clean_text, quote, quote_data
from kar.records import KIND_ITEM, KIND_USER, PromptRecord

if TYPE_CHECKING:  # scenario.py imports this module to check its templates
    from kar.prompts.scenario import Scenario

_ITEM_CORE = ("item_id", "title", "year", "genres", "creator")


def build_user_prompts(
    ds: Dataset,
    scenario: Scenario,
    as_of: pl.DataFrame | datetime,
    user_ids: Iterable[str] | None = None,
) -> list[PromptRecord]:
    """One KIND_USER prompt per user in ``as_of`` (or in ``user_ids``, in that order).

    ``as_of`` is a frame (user_id, as_of) or one tz-aware instant for every user of the
    dataset. Each prompt lists the user's most recent ``scenario.history_length``
    interactions strictly before their as-of instant, oldest first (ties by item_id).
    """
    cutoffs = _as_of_frame(ds, as_of)
    if user_ids is not None:
        wanted = [str(u) for u in user_ids]
        known = set(cutoffs["user_id"].to_list())
        missing = [u for u in wanted if u not in known]
        if missing:
            raise DataValidationError(
                f"{len(missing)} user(s) have no as_of instant, e.g. {missing[:5]}",
                file="as_of table",
                field="user_id",
            )
        order = pl.DataFrame({"user_id": wanted}, schema={"user_id": pl.Utf8}).unique(
            maintain_order=True
        )
        cutoffs = order.join(cutoffs, on="user_id", how="left", maintain_order="left")

    histories = _recent_histories(ds, cutoffs, scenario.history_length)
    item_info = item_titles(ds.items, scenario, set(_flatten(histories, "item_id")))
    profiles = _profiles(ds.users, scenario, cutoffs["user_id"])
    system = scenario.render_system()

    records = []
    for user_id, cutoff in cutoffs.iter_rows():
        rows = histories.get(user_id)
        history = _history_entries(rows, item_info, scenario) if rows else []
        variables = _user_vars(scenario, history, profiles.get(user_id, {}))
        records.append(
            PromptRecord(
                entity_type="user",
                entity_id=user_id,
                kind=KIND_USER,
                scenario=scenario.name,
                prompt_version=scenario.version,
                messages=chat_messages(system, scenario.render_user(variables)),
                as_of=cutoff,
                context_text=variables["history_text"],
            )
        )
    return records


def build_item_prompts(
    ds: Dataset, scenario: Scenario, item_ids: Iterable[str] | None = None
) -> list[PromptRecord]:
    """One KIND_ITEM prompt per item of ``ds.items`` (or of ``item_ids``, in that order)."""
    items = require_columns(ds.items, ("item_id", "title"), "items table")
    if item_ids is not None:
        wanted = [str(i) for i in item_ids]
        missing = sorted(set(wanted) - set(items["item_id"].to_list()))
        if missing:
            raise DataValidationError(
                f"{len(missing)} item id(s) not in the items table, e.g. {missing[:5]}",
                file="items table",
                field="item_id",
            )
        order = pl.DataFrame({"item_id": wanted}, schema={"item_id": pl.Utf8}).unique(
            maintain_order=True
        )
        items = order.join(items, on="item_id", how="left", maintain_order="left")

    system = scenario.render_system()
    records = []
    for row in items.iter_rows(named=True):
        variables, context = _item_vars(row, scenario)
        records.append(
            PromptRecord(
                entity_type="item",
                entity_id=str(row["item_id"]),
                kind=KIND_ITEM,
                scenario=scenario.name,
                prompt_version=scenario.version,
                messages=chat_messages(system, scenario.render_item(variables)),
                as_of=None,
                context_text=context,
            )
        )
    return records


# -- template variables ------------------------------------------------------------------


def _user_vars(
    scenario: Scenario, history: list[dict[str, Any]], user: dict[str, str]
) -> dict[str, Any]:
    lines = [h["line"] for h in history]
    return {
        "history": history,
        "history_text": "\n".join(lines) if lines else scenario.empty_history_text,
        "n_history": len(history),
        "user": user,
        "profile": ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in user.items()),
    }


def _history_entries(
    rows: dict[str, list[Any]], item_info: dict[str, tuple[str, int | None]], scenario: Scenario
) -> list[dict[str, Any]]:
    entries = []
    for item_id, rating, label in zip(rows["item_id"], rows["rating"], rows["label"], strict=True):
        title, year = item_info.get(item_id) or (quote(f"{scenario.item_noun} {item_id}"), None)
        line = f"- {title}" + (f" ({year})" if year is not None else "")
        liked = None if label is None else bool(label)
        if rating is not None:
            scale = f"/{scenario.rating_max:g}" if scenario.rating_max else ""
            line += f", rated {rating:g}{scale}"
        elif liked is not None:
            line += ", liked" if liked else ", not liked"
        entries.append(
            {"title": title, "year": year, "rating": rating, "liked": liked, "line": line}
        )
    return entries


def _item_vars(row: dict[str, Any], scenario: Scenario) -> tuple[dict[str, Any], str]:
    cap = scenario.text_max_chars
    title = clean_text(row.get("title"), scenario.title_max_chars) or f"item {row['item_id']}"
    year = row.get("year")
    genres = [g for g in (clean_text(x, cap) for x in (row.get("genres") or [])) if g]
    texts = item_texts(row, scenario)
    attributes = {
        k: quote_data(v, cap)
        for k, v in row.items()
        if k not in _ITEM_CORE and k not in texts and v is not None and clean_text(v, cap)
    }
    variables = {
        "title": quote(title),
        "year": year,
        "genres": [quote(g) for g in genres],
        "genres_text": ", ".join(quote(g) for g in genres),
        "creator": quote_data(row.get("creator"), cap) or None,
        "attributes": attributes,
        "texts": texts,
        "item_text": "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in texts.items()),
    }
    context = title + (f" ({year})" if year is not None else "")
    if genres:
        context += ", " + ", ".join(genres)
    return variables, context


def item_texts(row: dict[str, Any], scenario: Scenario) -> dict[str, str]:
    """The scenario's ``item_text_columns`` present in ``row`` and not empty, each cleaned
    (:func:`~kar.prompts.sanitize.clean_passage`: injection markers stripped), capped at
    ``item_text_max_chars`` and quoted: grounding data for the item-fact question."""
    out = {}
    for column in scenario.item_text_columns:
        text = clean_passage(row.get(column), scenario.item_text_max_chars)
        if text:
            out[column] = quote(text)
    return out


def sample_user_vars(scenario: Scenario, empty: bool = False) -> dict[str, Any]:
    """Representative user-template variables (used to check a scenario at load time)."""
    rows = {"item_id": ["1", "2"], "rating": [4.0, None], "label": [1, 0]}
    info = {"1": (quote("Sample Title"), 1999), "2": (quote("Another Title"), None)}
    history = [] if empty else _history_entries(rows, info, scenario)
    user = {a: quote("sample") for a in scenario.user_attributes}
    return _user_vars(scenario, history, user)


def sample_item_vars(scenario: Scenario) -> dict[str, Any]:
    """Representative item-template variables (used to check a scenario at load time)."""
    row = {"item_id": "1", "title": "Sample Title", "year": 1999, "genres": ["Drama"]}
    texts = {c: "Sample text." for c in scenario.item_text_columns}
    return _item_vars({**row, "creator": "Sample Creator", **texts}, scenario)[0]


def chat_messages(system: str, user: str) -> tuple[dict[str, str], ...]:
    """The system and user turns of one prompt."""
    return ({"role": "system", "content": system}, {"role": "user", "content": user})


# -- frames --------------------------------------------------------------------------------


def _as_of_frame(ds: Dataset, as_of: pl.DataFrame | datetime) -> pl.DataFrame:
    """Validated (user_id str, as_of Datetime(us, UTC)) frame, one row per user."""
    if isinstance(as_of, datetime):
        if as_of.tzinfo is None:
            raise DataValidationError("as_of must be timezone-aware (UTC)", field="as_of")
        users = ds.users["user_id"] if "user_id" in ds.users.columns else pl.Series([])
        ids = pl.concat([users.cast(pl.Utf8), ds.interactions["user_id"].cast(pl.Utf8)])
        as_of = pl.DataFrame({"user_id": ids.unique(maintain_order=True)}).with_columns(
            as_of=pl.lit(as_of.astimezone(UTC))
        )
    frame = require_columns(as_of, ("user_id", "as_of"), "as_of table")
    dtype = frame.schema["as_of"]
    if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
        raise DataValidationError(
            f"must be a timezone-aware Datetime column, got {dtype}",
            file="as_of table",
            field="as_of",
        )
    frame = frame.select(
        pl.col("user_id").cast(pl.Utf8),
        pl.col("as_of").dt.convert_time_zone("UTC").cast(TIMESTAMP),
    )
    for column in ("user_id", "as_of"):
        nulls = frame[column].is_null().arg_true()
        if len(nulls):
            raise DataValidationError(
                "null value", file="as_of table", row=nulls[0] + 1, field=column
            )
    dupes = frame["user_id"].is_first_distinct().not_().arg_true()
    if len(dupes):
        raise DataValidationError(
            f"duplicate user_id {frame['user_id'][dupes[0]]!r}",
            file="as_of table",
            row=dupes[0] + 1,
            field="user_id",
        )
    return frame


def _recent_histories(
    ds: Dataset, cutoffs: pl.DataFrame, n: int
) -> dict[str, dict[str, list[Any]]]:
    """user_id -> {item_id, rating, label}: last ``n`` interactions strictly before as_of."""
    inter = require_columns(
        ds.interactions, ("user_id", "item_id", "timestamp"), "interactions table"
    )
    extra = [pl.lit(None, pl.Float64).alias(c) for c in ("rating",) if c not in inter.columns]
    extra += [pl.lit(None, pl.Int8).alias(c) for c in ("label",) if c not in inter.columns]
    grouped = (
        inter.lazy()
        .with_columns(*extra)
        .select(
            pl.col("user_id").cast(pl.Utf8),
            pl.col("item_id").cast(pl.Utf8),
            pl.col("timestamp").cast(TIMESTAMP),
            pl.col("rating").cast(pl.Float64),
            pl.col("label").cast(pl.Int8),
        )
        .join(cutoffs.lazy(), on="user_id", how="inner")
        .filter(pl.col("timestamp") < pl.col("as_of"))
        .sort(["user_id", "timestamp", "item_id"])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id", "rating", "label").tail(n))
        .collect()
    )
    return {row["user_id"]: row for row in grouped.iter_rows(named=True)}


def item_titles(
    items: pl.DataFrame, scenario: Scenario, item_ids: set[str]
) -> dict[str, tuple[str, int | None]]:
    """item_id -> (quoted clean title, year) for the items that appear in histories."""
    items = require_columns(items, ("item_id", "title"), "items table")
    year = pl.col("year") if "year" in items.columns else pl.lit(None, pl.Int32).alias("year")
    subset = items.select(pl.col("item_id").cast(pl.Utf8), "title", year).filter(
        pl.col("item_id").is_in(list(item_ids))
    )
    return {
        item_id: (quote(clean_text(title, scenario.title_max_chars) or f"item {item_id}"), yr)
        for item_id, title, yr in subset.iter_rows()
    }


def _profiles(
    users: pl.DataFrame, scenario: Scenario, user_ids: pl.Series
) -> dict[str, dict[str, str]]:
    """user_id -> {attribute: quoted value} for the scenario's user_attributes present."""
    columns = [c for c in scenario.user_attributes if c in users.columns]
    if not columns or "user_id" not in users.columns:
        return {}
    subset = users.select(pl.col("user_id").cast(pl.Utf8), *columns).filter(
        pl.col("user_id").is_in(user_ids.implode())
    )
    cap = scenario.text_max_chars
    return {
        row["user_id"]: {c: q for c in columns if (q := quote_data(row[c], cap))}
        for row in subset.iter_rows(named=True)
    }


def require_columns(frame: pl.DataFrame, columns: Sequence[str], name: str) -> pl.DataFrame:
    """``frame``, or a DataValidationError naming the first of ``columns`` it lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"missing column(s) {missing}; found {frame.columns}", file=name, field=missing[0]
        )
    return frame


def _flatten(histories: dict[str, dict[str, list[Any]]], key: str) -> Iterable[str]:
    for rows in histories.values():
        yield from rows[key]
