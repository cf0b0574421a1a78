"""Generic CSV / Parquet loader and the assembly step every loader shares.

``assemble_dataset`` turns raw frames that already use kar's column names (values may still
be strings) into a validated :class:`~kar.data.schema.Dataset`; see docs/data.md for which
problems are fatal and which rows are rejected.
"""

from __future__ import annotations

import dataclasses
import logging
import re
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
    is_nan_label,
    not_finite,
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
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"invalid column mapping: field {where!r}: {first['msg']}") from None


@dataclass(frozen=True)
class Source:
    """A raw frame (kar column names, :data:`ROW` column) and the file it came from;
    ``names``: kar column -> the file's own name, for error messages."""

    frame: pl.DataFrame
    file: str
    names: dict[str, str] = dataclasses.field(default_factory=dict)


_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:[-–]\d{0,4})?\)\s*$")
_ARTICLE = re.compile(r"^(?P<main>.+?), (?P<art>The|A|An)(?P<rest> \(.*\))?$")


def split_title(raw: str | None) -> tuple[str | None, int | None]:
    """``"Shawshank Redemption, The (1994)"`` -> ``("The Shawshank Redemption", 1994)``."""
    if raw is None:
        return None, None
    raw = raw.strip()
    m = _TITLE_YEAR.match(raw)
    title, year = (m["title"], int(m["year"])) if m else (raw, None)
    a = _ARTICLE.match(title)
    if a:
        title = f"{a['art']} {a['main']}{a['rest'] or ''}"
    return title, year


def split_titles(df: pl.DataFrame, *, title_year_first: bool = True) -> pl.DataFrame:
    """Normalise ``title`` with :func:`split_title`: a year suffix goes to ``year``, a
    trailing article to the front. ``title_year_first``: the title's year wins over the
    ``year`` column (MovieLens); otherwise it only fills a null year (your tables)."""
    parsed = df.get_column("title").map_elements(
        lambda t: dict(zip(("t", "y"), split_title(t), strict=True)),
        return_dtype=pl.Struct({"t": pl.Utf8, "y": pl.Int32}),
    )
    year = pl.Series(parsed.struct.field("y"))
    if "year" in df.columns:
        given = df.get_column("year").cast(pl.Int32, strict=False)
        year = year.fill_null(given) if title_year_first else given.fill_null(year)
    return df.with_columns(title=parsed.struct.field("t"), year=year)


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
    if df.height:  # "Godfather, The (1972)" -> "The Godfather", year 1972 (as MovieLens)
        df = split_titles(df, title_year_first=False)
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


_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_PLAUSIBLE_SECONDS = (-2_208_988_800, 7_258_118_400)  # 1900-01-01 .. 2200-01-01 UTC


def epoch_unit(values: pl.Series) -> str:
    """The unit of epoch times judged by magnitude (median of |value|): ``s`` below 1e11
    (the year 5138 in seconds), ``ms`` below 1e14, ``us`` below 1e17, else ``ns``."""
    magnitude = values.drop_nulls().abs().median()
    if magnitude is None:
        return "s"
    for unit, limit in (("s", 1e11), ("ms", 1e14), ("us", 1e17)):
        if float(magnitude) < limit:  # type: ignore[arg-type]
            return unit
    return "ns"


def epoch_values(df: pl.DataFrame, col: str, fmt: str | None = None) -> pl.Series | None:
    """``col`` as Int64 epoch numbers when it holds them (a numeric column, or digit
    strings judged by the first value), else None (datetimes, ISO or ``fmt`` strings)."""
    dtype = df.schema[col]
    if fmt is not None or isinstance(dtype, pl.Datetime | pl.Date):
        return None
    if dtype.is_numeric():
        return df.get_column(col).cast(pl.Int64, strict=False)
    values = df.get_column(col).cast(pl.Utf8).str.strip_chars()
    filled = values.filter(values != "").drop_nulls()
    if filled.len() == 0 or not filled[0].lstrip("-").isdigit():
        return None
    return values.cast(pl.Int64, strict=False)


def _check_epoch_range(df: pl.DataFrame, epochs: pl.Series, unit: str, file: str, col: str) -> None:
    """Epoch times read in ``unit`` must fall in 1900-2200: otherwise the unit is wrong."""
    per = _PER_SECOND[unit]
    lo, hi = (v * per for v in _PLAUSIBLE_SECONDS)
    bad = ((epochs < lo) | (epochs > hi)).fill_null(False)
    if not bad.any():
        return
    first = int(bad.arg_true()[0])
    guess = epoch_unit(epochs)
    hint = (
        f"they look like {guess!r}: set dataset.timestamp_unit: {guess} in kar.yaml"
        if guess != unit
        else "set dataset.timestamp_unit (s, ms, us or ns) in kar.yaml, or fix the values"
    )
    raise DataValidationError(
        f"epoch time {epochs[first]} read in {unit!r} is not between 1900 and 2200 "
        f"({int(bad.sum())} such rows); {hint}",
        file=file,
        row=int(df.get_column(ROW)[first]) if ROW in df.columns else None,
        field=col,
    )


def parse_timestamps(
    df: pl.DataFrame, src: Source, *, unit: str | None = None, fmt: str | None = None
) -> pl.DataFrame:
    """Parse the ``timestamp`` column into Datetime(us, UTC): epoch numbers in ``unit``
    (detected by magnitude when None: s / ms / us / ns), strings with ``fmt`` or as ISO
    8601. Errors name the file's own column; epochs outside 1900-2200 are fatal."""
    if unit is not None and unit not in _PER_SECOND:
        raise ConfigError(f"timestamp_unit must be one of {', '.join(_PER_SECOND)}, not {unit!r}")
    col = src.names.get("timestamp", "timestamp")
    if col != "timestamp" and col in df.columns:
        col = "timestamp"
    epochs = epoch_values(df, "timestamp", fmt)
    if epochs is not None:
        unit = unit or epoch_unit(epochs)
        _check_epoch_range(df, epochs, unit, src.file, col)
    df = parse_timestamp(df.rename({"timestamp": col}), col, src.file, unit=unit, fmt=fmt)
    return df.rename({col: "timestamp"})


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
    df = parse_timestamps(df, src, unit=timestamp_unit, fmt=timestamp_format)
    df = parse_numeric(df, "rating", pl.Float64, file)
    for col in ("user_id", "item_id", "timestamp"):
        df = rejects.split(
            df, pl.col(col).is_null(), table="interactions", file=file, reason=f"missing {col}"
        )
    df = rejects.split(
        df,
        not_finite("rating"),
        table="interactions",
        file=file,
        reason="rating is not finite (NaN or inf)",
    )
    if has_label:
        df = rejects.split(
            df, is_nan_label("label"), table="interactions", file=file, reason="label is NaN"
        )
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
    inter, item_df = _with_items(inter, interactions.file, items, rejects, genre_separator)
    inter, user_df = _with_users(inter, interactions.file, users, rejects)
    inter = _without_repeats(inter, interactions.file, rejects)
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


def _with_items(
    inter: pl.DataFrame,
    ifile: str,
    items: Source | None,
    rejects: RejectLog,
    genre_separator: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(interactions whose item the items table keeps, the items table); without one, the
    items are the interactions' ids."""
    if items is None:
        return inter, _items_from_interactions(inter)
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
    return inter, item_df


def _with_users(
    inter: pl.DataFrame, ifile: str, users: Source | None, rejects: RejectLog
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(interactions whose user the users table lists, the users table); without one, the
    users are the interactions' ids."""
    if users is None:
        return inter, inter.select("user_id").unique().sort("user_id")
    user_df = prepare_users(users, rejects)
    known = pl.col("user_id").is_in(user_df.get_column("user_id").implode())
    inter = rejects.split(
        inter, ~known, table="interactions", file=ifile, reason="user_id not in users table"
    )
    return inter, user_df


def _without_repeats(inter: pl.DataFrame, ifile: str, rejects: RejectLog) -> pl.DataFrame:
    """The interactions without repeats of (user, item, timestamp) (the first in file order
    is kept), sorted by user, time and item."""
    repeat = pl.int_range(pl.len()).over("user_id", "item_id", "timestamp") > 0  # file order
    inter = rejects.split(
        inter,
        repeat,
        table="interactions",
        file=ifile,
        reason="duplicate interaction (same user_id, item_id, timestamp)",
    )
    return inter.drop(ROW).sort("user_id", "timestamp", "item_id")


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
    ``rating >= 4.0``. Timestamps: epoch numbers in ``timestamp_unit`` (s, ms, us or ns;
    detected by magnitude when None) or strings in ``timestamp_format`` (default ISO 8601;
    naive times are UTC). Titles are normalised as MovieLens' (:func:`split_title`).
    """
    cmap = ColumnMapping.coerce(mapping)
    if label_column is not None:
        cmap = cmap.model_copy(update={"label": label_column})
        cmap.model_fields_set.add("label")
    inter_file = str(interactions)
    raw = read_table(interactions)
    names = {f: getattr(cmap, f) for f in ("timestamp",) if getattr(cmap, f) in raw.columns}
    inter_raw = _apply_mapping(
        raw,
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
        Source(inter_raw, inter_file, names),
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
