"""Checks shared by every loader: fatal errors name file, row and field; usable-but-bad rows
are collected as rejects with a reason.

Row numbers are 1-based data rows, header excluded (for headerless MovieLens files this is
the line number). Every raw frame carries them in the :data:`ROW` column.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import polars as pl

from kar.errors import DataValidationError

from .schema import TIMESTAMP, to_utc

log = logging.getLogger(__name__)

ROW = "__row"  # 1-based data row in the source file (header excluded)
REJECT_SCHEMA: dict[str, pl.DataType] = {
    "table": pl.Utf8,
    "file": pl.Utf8,
    "row": pl.Int64,
    "reason": pl.Utf8,
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
}
_TIME_UNITS = ("s", "ms", "us", "ns")


def decode_utf8(data: bytes, file: str | Path, *, header: bool = True, sep: str = ",") -> str:
    """Decode ``data`` as strict UTF-8; on a bad byte raise naming the file, row and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line_no = data.count(b"\n", 0, exc.start) + 1
        row = line_no - 1 if header else line_no
        field = None
        if header and line_no > 1:
            names = data[: data.find(b"\n")].decode("utf-8", "replace").strip().split(sep)
            col = data.count(sep.encode(), line_start, exc.start)
            field = names[col].strip('"') if col < len(names) else None
        raise DataValidationError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line_no}); "
            "re-save the file as UTF-8",
            file=file,
            row=row if row > 0 else None,
            field=field,
        ) from None


def require_columns(df: pl.DataFrame, required: Iterable[str], file: str | Path) -> None:
    """Raise naming the first missing column and listing the columns found."""
    found = [c for c in df.columns if c != ROW]
    for name in required:
        if name not in df.columns:
            raise DataValidationError(
                f"required column missing; columns found: {found}", file=file, field=name
            )


def check_unique(df: pl.DataFrame, key: str, file: str | Path) -> None:
    """Duplicate ids in an items or users table are fatal: raise naming the second occurrence."""
    dup = df.filter(pl.col(key).is_not_null() & pl.col(key).is_duplicated())
    if dup.height:
        first = dup.sort(ROW).row(0, named=True)
        rows = dup.filter(pl.col(key) == first[key]).get_column(ROW).sort().to_list()
        raise DataValidationError(
            f"duplicate {key} {first[key]!r} (rows {rows}); ids must be unique",
            file=file,
            row=rows[1],
            field=key,
        )


def _first_bad(df: pl.DataFrame, raw: str, parsed: pl.Expr, file: str | Path, what: str) -> None:
    bad = df.select(pl.col(ROW), pl.col(raw), parsed.alias("__p")).filter(
        pl.col(raw).is_not_null() & pl.col("__p").is_null()
    )
    if bad.height:
        row, value, _ = bad.row(0)
        raise DataValidationError(
            f"cannot parse {value!r} as {what} ({bad.height} such rows)",
            file=file,
            row=row,
            field=raw,
        )


def _blank_to_null(col: str) -> pl.Expr:
    return pl.when(pl.col(col).str.strip_chars() == "").then(None).otherwise(pl.col(col))


def parse_numeric(df: pl.DataFrame, col: str, dtype: pl.DataType, file: str | Path) -> pl.DataFrame:
    """Cast ``col`` to ``dtype``; empty cells become null, a malformed value is fatal."""
    if col not in df.columns:
        return df.with_columns(pl.lit(None, dtype=dtype).alias(col))
    if df.schema[col] == pl.Utf8:
        df = df.with_columns(_blank_to_null(col).str.strip_chars().alias(col))
        if dtype.is_integer():
            parsed = pl.col(col).cast(pl.Float64, strict=False)
            parsed = pl.when(parsed == parsed.round(0)).then(parsed).cast(dtype, strict=False)
        else:
            parsed = pl.col(col).cast(dtype, strict=False)
    else:
        parsed = pl.col(col).cast(dtype, strict=False)
    _first_bad(df, col, parsed, file, str(dtype))
    return df.with_columns(parsed.alias(col))


def not_finite(col: str) -> pl.Expr:
    """True where the float column ``col`` holds NaN or +/-inf (null stays null)."""
    return pl.col(col).is_nan() | pl.col(col).is_infinite()


def is_nan_label(col: str) -> pl.Expr:
    """True where a label cell is NaN (a float NaN or the text nan, as pandas writes a gap)."""
    return pl.col(col).cast(pl.Utf8).str.strip_chars().str.to_lowercase() == "nan"


def parse_label(df: pl.DataFrame, col: str, file: str | Path) -> pl.DataFrame:
    """Labels: 0/1 (also true/false, yes/no; numbers of any dtype); anything else (NaN and
    inf included) is fatal; empty is null. Reject NaN labels first (:func:`is_nan_label`)."""
    if df.schema[col] == pl.Boolean:
        return df.with_columns(pl.col(col).cast(pl.Int8))
    if df.schema[col] != pl.Utf8:
        df = df.with_columns(pl.col(col).cast(pl.Utf8))
    text = _blank_to_null(col).str.strip_chars().str.to_lowercase()
    parsed = (
        pl.when(text.is_in(["1", "1.0", "true", "yes"]))
        .then(pl.lit(1, pl.Int8))
        .when(text.is_in(["0", "0.0", "false", "no"]))
        .then(pl.lit(0, pl.Int8))
        .otherwise(None)
    )
    df = df.with_columns(_blank_to_null(col).cast(pl.Utf8).alias(col))
    _first_bad(df, col, parsed, file, "a 0/1 label")
    return df.with_columns(parsed.alias(col))


def parse_timestamp(
    df: pl.DataFrame,
    col: str,
    file: str | Path,
    *,
    unit: str | None = None,
    fmt: str | None = None,
) -> pl.DataFrame:
    """Parse ``col`` into Datetime(us, UTC).

    Integers (or digit strings) are epoch times in ``unit`` (default seconds); other strings
    are parsed with ``fmt`` (default: ISO 8601). Naive times are taken as UTC. Empty cells
    become null; a value that cannot be parsed is fatal.
    """
    if unit is not None and unit not in _TIME_UNITS:
        raise ValueError(f"timestamp unit must be one of {_TIME_UNITS}, got {unit!r}")
    dtype = df.schema[col]
    if isinstance(dtype, pl.Datetime):
        expr = pl.col(col)
        expr = (
            expr.dt.replace_time_zone("UTC")
            if dtype.time_zone is None
            else expr.dt.convert_time_zone("UTC")
        )
        return df.with_columns(expr.cast(TIMESTAMP).alias(col))
    if isinstance(dtype, pl.Date):
        return df.with_columns(pl.col(col).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    if dtype.is_numeric():
        df = df.with_columns(pl.col(col).cast(pl.Int64, strict=False))
        return df.with_columns(pl.from_epoch(col, time_unit=unit or "s").cast(TIMESTAMP))
    df = df.with_columns(_blank_to_null(col).str.strip_chars().alias(col))
    values = df.get_column(col).drop_nulls()
    looks_epoch = values.len() > 0 and values[0].lstrip("-").isdigit()  # judged by 1st value
    if fmt is None and (unit is not None or looks_epoch):
        epoch = pl.col(col).cast(pl.Int64, strict=False)
        _first_bad(df, col, epoch, file, f"an epoch time in {unit or 's'}")
        return df.with_columns(pl.from_epoch(epoch, time_unit=unit or "s").cast(TIMESTAMP))
    parsed = _parse_datetime_strings(df.get_column(col), fmt)
    bad = df.select(ROW, col).with_columns(parsed.alias("__p"))
    bad = bad.filter(pl.col(col).is_not_null() & pl.col("__p").is_null())
    if bad.height:
        row, value = bad.row(0)[:2]
        raise DataValidationError(
            f"cannot parse {value!r} as a timestamp"
            f" ({'format ' + repr(fmt) if fmt else 'ISO 8601 expected'}; {bad.height} such rows)",
            file=file,
            row=row,
            field=col,
        )
    return df.with_columns(parsed.alias(col))


def _parse_datetime_strings(values: pl.Series, fmt: str | None) -> pl.Series:
    """Parse strings to Datetime(us, UTC), null where unparseable (mixed offsets allowed)."""
    if values.null_count() == values.len():
        return pl.Series(values.name, [None] * values.len(), dtype=TIMESTAMP)
    try:  # fast path: polars, one format for the whole column
        parsed = values.str.to_datetime(format=fmt, strict=False, time_unit="us")
        if parsed.dtype.time_zone is None:  # type: ignore[union-attr]
            parsed = parsed.dt.replace_time_zone("UTC")
        parsed = parsed.dt.convert_time_zone("UTC").cast(TIMESTAMP)
    except pl.exceptions.PolarsError:
        parsed = pl.Series(values.name, [None] * values.len(), dtype=TIMESTAMP)
    missed = parsed.is_null() & values.is_not_null()
    if missed.any():  # mixed formats / offsets: Python's parser, once per distinct value
        distinct = values.filter(missed).unique()
        lookup = dict(zip(distinct.to_list(), (_parse_one(v, fmt) for v in distinct), strict=True))
        slow = values.replace_strict(lookup, default=None, return_dtype=TIMESTAMP)
        parsed = pl.select(pl.when(missed).then(slow).otherwise(parsed)).to_series()
    return parsed.alias(values.name)


def _parse_one(value: str, fmt: str | None) -> datetime | None:
    try:
        dt = datetime.strptime(value, fmt) if fmt else datetime.fromisoformat(value)
    except ValueError:
        return None
    return to_utc(dt)


class RejectLog:
    """Collects rows that are dropped, each with the table, file, row and a reason."""

    def __init__(self) -> None:
        self._parts: list[pl.DataFrame] = []

    def add(self, rows: pl.DataFrame, *, table: str, file: str | Path, reason: str) -> None:
        if not rows.height:
            return
        log.warning("%s: rejected %d %s rows: %s", file, rows.height, table, reason)
        cols = {
            "table": pl.lit(table),
            "file": pl.lit(str(file)),
            "row": pl.col(ROW).cast(pl.Int64) if ROW in rows.columns else pl.lit(None),
            "reason": pl.lit(reason),
            "user_id": pl.col("user_id") if "user_id" in rows.columns else pl.lit(None),
            "item_id": pl.col("item_id") if "item_id" in rows.columns else pl.lit(None),
        }
        frame = rows.select(**cols).cast(REJECT_SCHEMA)  # type: ignore[arg-type]
        self._parts.append(frame)

    def split(
        self, df: pl.DataFrame, bad: pl.Expr, *, table: str, file: str | Path, reason: str
    ) -> pl.DataFrame:
        """Reject the rows of ``df`` where ``bad`` is true; return the others."""
        mask = df.select(bad.fill_null(False).alias("m")).get_column("m")
        self.add(df.filter(mask), table=table, file=file, reason=reason)
        return df.filter(~mask)

    def frame(self) -> pl.DataFrame:
        if not self._parts:
            return pl.DataFrame(schema=REJECT_SCHEMA)
        return pl.concat(self._parts).sort("table", "file", "row", nulls_last=True)

    def counts(self) -> dict[str, int]:
        frame = self.frame()
        return dict(frame.group_by("reason").len().sort("reason").iter_rows())

    def write(self, rejects_dir: str | Path, name: str) -> Path:
        """Write ``<rejects_dir>/<name>_rejects.csv`` (also when empty, as a record)."""
        out = Path(rejects_dir) / f"{name}_rejects.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.frame().write_csv(out)
        return out
