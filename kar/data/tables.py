"""Generic CSV / Parquet loader and the assembly step every loader shares.

``assemble_dataset`` turns raw frames that already use kar's column names (values may still
be strings) into a validated :class:`~kar.data.schema.Dataset`; see docs/data.md for which
problems are fatal and which rows are rejected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from pydantic import BaseModel, ConfigDict, ValidationError

from kar.errors import ConfigError, DataValidationError

from .schema import INTERACTION_SCHEMA, ITEM_REQUIRED, USER_REQUIRED, Dataset
from .validate import (
    ROW,
    RejectLog,
    check_unique,
    decode_utf8,
    parse_label,
    parse_numeric,
    parse_timestamp,
    require_columns,
)

log = logging.getLogger(__name__)

DEFAULT_LABEL_THRESHOLD = 4.0
_ITEM_FIELDS = ("item_id", "title", "year", "genres", "creator")
_OWN_NAMES = {"user_id", "item_id", "timestamp", "rating", "label", *ITEM_REQUIRED}


class ColumnMapping(BaseModel):
    """Maps the columns of your files to kar's names (value = your column name).

    Optional fields whose column is absent are filled with nulls, unless you set them
    explicitly (then a missing column is an error). ``item_attributes`` /
    ``user_attributes``: extra columns to keep as strings (``None`` = all other columns).
    """

    model_config = ConfigDict(extra="forbid")

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"
    label: str | None = "label"
    title: str = "title"
    year: str | None = "year"
    genres: str | None = "genres"
    genre_separator: str = "|"
    creator: str | None = "creator"
    item_attributes: list[str] | None = None
    user_attributes: list[str] | None = None

    @classmethod
    def coerce(cls, value: ColumnMapping | dict | None) -> ColumnMapping:
        if value is None:
            return cls()
        if isinstance(value, ColumnMapping):
            return value
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            raise ConfigError(f"invalid column mapping: {exc}") from None


@dataclass(frozen=True)
class Source:
    """A raw frame (kar column names, :data:`ROW` column) and the file it came from."""

    frame: pl.DataFrame
    file: str


def read_table(path: str | Path, *, separator: str | None = None) -> pl.DataFrame:
    """Read a CSV/TSV (strict UTF-8, every column as string) or Parquet file, adding ROW."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError("file not found", file=path)
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            df = pl.read_parquet(path)
        else:
            sep = separator or ("\t" if suffix in {".tsv", ".tab"} else ",")
            text = decode_utf8(path.read_bytes(), path, sep=sep).lstrip("\ufeff")
            df = pl.read_csv(text.encode(), separator=sep, infer_schema=False)
    except DataValidationError:
        raise
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataValidationError(f"cannot read table: {exc}", file=path) from None
    return df.with_columns(pl.int_range(1, df.height + 1, dtype=pl.Int64).alias(ROW))


def _ids(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """Ids as stripped strings (integral floats lose their '.0'); blanks become null."""
    dtype = df.schema[col]
    expr = pl.col(col)
    if dtype.is_float():
        expr = pl.when(expr == expr.round(0)).then(expr.cast(pl.Int64)).otherwise(expr)
    expr = expr.cast(pl.Utf8).str.strip_chars()
    return df.with_columns(pl.when(expr == "").then(None).otherwise(expr).alias(col))


def _str_columns(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    return df.with_columns(pl.col(c).cast(pl.Utf8) for c in cols)


def _genres(df: pl.DataFrame, separator: str) -> pl.DataFrame:
    if "genres" not in df.columns:
        return df.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("genres"))
    if isinstance(df.schema["genres"], pl.List):
        expr = pl.col("genres").cast(pl.List(pl.Utf8))
    else:
        expr = pl.col("genres").cast(pl.Utf8).fill_null("").str.split(separator)
    expr = expr.list.eval(pl.element().str.strip_chars().filter(pl.element() != ""))
    return df.with_columns(expr.fill_null([]).alias("genres"))


def prepare_items(src: Source, rejects: RejectLog, *, genre_separator: str = "|") -> pl.DataFrame:
    """Validate an items frame: unique ids (fatal), typed year/genres, rejects without title."""
    df, file = src.frame, src.file
    require_columns(df, ["item_id", "title"], file)
    df = _ids(df, "item_id")
    df = rejects.split(
        df, pl.col("item_id").is_null(), table="items", file=file, reason="missing item_id"
    )
    check_unique(df, "item_id", file)
    df = parse_numeric(df, "year", pl.Int32, file)
    df = _genres(df, genre_separator)
    if "creator" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias("creator"))
    extras = [c for c in df.columns if c not in (*_ITEM_FIELDS, ROW)]
    df = _str_columns(df, ["title", "creator", *extras])
    df = df.with_columns(pl.col("title").str.strip_chars())
    df = rejects.split(
        df,
        pl.col("title").is_null() | (pl.col("title") == ""),
        table="items",
        file=file,
        reason="missing title",
    )
    return df.select(*_ITEM_FIELDS, *extras, ROW).cast(ITEM_REQUIRED)  # type: ignore[arg-type]


def prepare_users(src: Source, rejects: RejectLog) -> pl.DataFrame:
    """Validate a users frame: unique ids (fatal); attributes kept as strings."""
    df, file = src.frame, src.file
    require_columns(df, ["user_id"], file)
    df = _ids(df, "user_id")
    df = rejects.split(
        df, pl.col("user_id").is_null(), table="users", file=file, reason="missing user_id"
    )
    check_unique(df, "user_id", file)
    extras = [c for c in df.columns if c not in ("user_id", ROW)]
    return _str_columns(df, extras).select("user_id", *extras, ROW).cast(USER_REQUIRED)  # type: ignore[arg-type]


def prepare_interactions(
    src: Source,
    rejects: RejectLog,
    *,
    label_threshold: float | None,
    timestamp_unit: str | None = None,
    timestamp_format: str | None = None,
) -> tuple[pl.DataFrame, str]:
    """Validate interactions; returns the frame and a description of the label rule."""
    df, file = src.frame, src.file
    require_columns(df, ["user_id", "item_id", "timestamp"], file)
    has_label = "label" in df.columns and label_threshold is None
    if not has_label and "rating" not in df.columns:
        raise DataValidationError(
            "need a rating column (labels = rating >= threshold) or a label column; "
            f"columns found: {[c for c in df.columns if c != ROW]}",
            file=file,
            field="rating",
        )
    df = _ids(_ids(df, "user_id"), "item_id")
    df = parse_timestamp(df, "timestamp", file, unit=timestamp_unit, fmt=timestamp_format)
    df = parse_numeric(df, "rating", pl.Float64, file)
    for col in ("user_id", "item_id", "timestamp"):
        df = rejects.split(
            df, pl.col(col).is_null(), table="interactions", file=file, reason=f"missing {col}"
        )
    if has_label:
        df = parse_label(df, "label", file)
        rule = "label column"
        df = rejects.split(
            df, pl.col("label").is_null(), table="interactions", file=file, reason="missing label"
        )
    else:
        threshold = DEFAULT_LABEL_THRESHOLD if label_threshold is None else label_threshold
        rule = f"label = 1 if rating >= {threshold:g} else 0"
        df = rejects.split(
            df,
            pl.col("rating").is_null(),
            table="interactions",
            file=file,
            reason="missing rating (labels come from ratings)",
        )
        df = df.with_columns((pl.col("rating") >= threshold).cast(pl.Int8).alias("label"))
    return df.select(*INTERACTION_SCHEMA, ROW).cast(INTERACTION_SCHEMA), rule  # type: ignore[arg-type]


def assemble_dataset(
    name: str,
    interactions: Source,
    items: Source | None = None,
    users: Source | None = None,
    *,
    scenario: str = "movies",
    label_threshold: float | None = None,
    genre_separator: str = "|",
    timestamp_unit: str | None = None,
    timestamp_format: str | None = None,
    rejects_dir: str | Path | None = None,
    meta: dict[str, object] | None = None,
) -> Dataset:
    """Validate raw frames (kar column names) into a Dataset; rejected rows are recorded."""
    rejects = RejectLog()
    inter, rule = prepare_interactions(
        interactions,
        rejects,
        label_threshold=label_threshold,
        timestamp_unit=timestamp_unit,
        timestamp_format=timestamp_format,
    )
    n_read = interactions.frame.height
    ifile = interactions.file
    if items is not None:
        item_df = prepare_items(items, rejects, genre_separator=genre_separator)
        listed = _ids(items.frame, "item_id").get_column("item_id").drop_nulls().implode()
        kept = pl.col("item_id").is_in(item_df.get_column("item_id").implode())
        inter = rejects.split(
            inter,
            pl.col("item_id").is_in(listed) & ~kept,
            table="interactions",
            file=ifile,
            reason="item_id rejected in items table",
        )
        inter = rejects.split(
            inter, ~kept, table="interactions", file=ifile, reason="item_id not in items table"
        )
    else:
        item_df = _items_from_interactions(inter)
    if users is not None:
        user_df = prepare_users(users, rejects)
        known = pl.col("user_id").is_in(user_df.get_column("user_id").implode())
        inter = rejects.split(
            inter, ~known, table="interactions", file=ifile, reason="user_id not in users table"
        )
    else:
        user_df = inter.select("user_id").unique().sort("user_id")
    repeat = pl.int_range(pl.len()).over("user_id", "item_id", "timestamp") > 0  # file order
    inter = rejects.split(
        inter,
        repeat,
        table="interactions",
        file=ifile,
        reason="duplicate interaction (same user_id, item_id, timestamp)",
    )
    inter = inter.drop(ROW).sort("user_id", "timestamp", "item_id")
    reject_frame = rejects.frame()
    info: dict[str, object] = dict(meta or {})
    info.update(
        files={
            "interactions": interactions.file,
            "items": items and items.file,
            "users": users and users.file,
        },
        label_rule=rule,
        rows_read={"interactions": n_read},
        rejected=rejects.counts(),
    )
    if rejects_dir is not None:
        info["rejects_file"] = str(rejects.write(rejects_dir, name))
    log.info(
        "%s: %d interactions kept of %d read, %d rows rejected",
        name,
        inter.height,
        n_read,
        reject_frame.height,
    )
    return Dataset(
        name=name,
        interactions=inter,
        items=item_df.drop(ROW, strict=False),
        users=user_df.drop(ROW, strict=False),
        scenario=scenario,
        rejects=reject_frame,
        meta=info,
    )


def _items_from_interactions(inter: pl.DataFrame) -> pl.DataFrame:
    """Without an items table: one row per item id; title = null (prompts see only the id)."""
    return (
        inter.select("item_id")
        .unique()
        .sort("item_id")
        .with_columns(
            pl.lit(None, dtype=pl.Utf8).alias("title"),
            pl.lit(None, dtype=pl.Int32).alias("year"),
            pl.lit([], dtype=pl.List(pl.Utf8)).alias("genres"),
            pl.lit(None, dtype=pl.Utf8).alias("creator"),
        )
    )


def _apply_mapping(
    df: pl.DataFrame,
    mapping: ColumnMapping,
    fields: dict[str, bool],
    file: str,
    attributes: list[str] | None,
) -> pl.DataFrame:
    """Rename the mapped columns of one table to kar names; keep attribute columns.

    ``fields``: kar field -> required. When the mapped column is absent but one with kar's
    own name is there, that one is used. A required field, or an optional one set explicitly
    in the mapping, with neither column present is fatal (the error names your column).
    """
    explicit = mapping.model_fields_set
    rename: dict[str, str] = {}
    for field, required in fields.items():
        source = getattr(mapping, field)
        if source is None:
            continue
        if source in df.columns:
            rename[source] = field
        elif field in df.columns:  # e.g. interactions say "iid", the items file "item_id"
            rename[field] = field
        elif required or field in explicit:
            require_columns(df, [source], file)
    if attributes is None:
        extras = [c for c in df.columns if c not in rename and c != ROW and c not in _OWN_NAMES]
    else:
        require_columns(df, attributes, file)
        extras = list(attributes)
    return df.select(*(pl.col(s).alias(t) for s, t in rename.items()), *extras, ROW)


def load_table_dataset(
    interactions: str | Path,
    items: str | Path | None = None,
    users: str | Path | None = None,
    mapping: ColumnMapping | dict | None = None,
    *,
    label_threshold: float | None = None,
    label_column: str | None = None,
    timestamp_unit: str | None = None,
    timestamp_format: str | None = None,
    name: str = "custom",
    scenario: str = "movies",
    rejects_dir: str | Path | None = None,
) -> Dataset:
    """Load your own CSV (UTF-8) or Parquet files into a Dataset.

    Labels: if ``label_threshold`` is given, ``label = rating >= label_threshold``; otherwise
    the label column (``label_column`` or ``mapping.label``) when present; otherwise
    ``rating >= 4.0``. Timestamps: epoch numbers in ``timestamp_unit`` (default ``"s"``) or
    strings in ``timestamp_format`` (default ISO 8601; naive times are UTC).
    """
    cmap = ColumnMapping.coerce(mapping)
    if label_column is not None:
        cmap = cmap.model_copy(update={"label": label_column})
        cmap.model_fields_set.add("label")
    inter_file = str(interactions)
    inter_raw = _apply_mapping(
        read_table(interactions),
        cmap,
        {"user_id": True, "item_id": True, "timestamp": True, "rating": False, "label": False},
        inter_file,
        attributes=[],
    )
    item_src = user_src = None
    if items is not None:
        frame = _apply_mapping(
            read_table(items),
            cmap,
            {"item_id": True, "title": True, "year": False, "genres": False, "creator": False},
            str(items),
            cmap.item_attributes,
        )
        item_src = Source(frame, str(items))
    if users is not None:
        frame = _apply_mapping(
            read_table(users), cmap, {"user_id": True}, str(users), cmap.user_attributes
        )
        user_src = Source(frame, str(users))
    return assemble_dataset(
        name,
        Source(inter_raw, inter_file),
        item_src,
        user_src,
        scenario=scenario,
        label_threshold=label_threshold,
        genre_separator=cmap.genre_separator,
        timestamp_unit=timestamp_unit,
        timestamp_format=timestamp_format,
        rejects_dir=rejects_dir,
        meta={"mapping": cmap.model_dump()},
    )
