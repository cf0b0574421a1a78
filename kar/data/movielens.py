"""MovieLens loaders: 100K (u.data / u.item / u.user), 1M (*.dat with '::'), latest-small (CSV).

100K and 1M files are latin-1 by GroupLens' spec and are decoded as such; ml-latest-small
is UTF-8 (its README says so) and goes through the strict generic reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from kar.errors import ConfigError, DataValidationError

from .schema import Dataset
from .tables import Source, assemble_dataset, load_table_dataset, split_titles
from .validate import ROW

Variant = Literal["100k", "1m", "latest-small"]

GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
AGES_1M = {
    "1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44",
    "45": "45-49", "50": "50-55", "56": "56+",
}  # fmt: skip
OCCUPATIONS_1M = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
_SEP = "\x1f"  # stand-in for '::' so polars can split on one byte


def detect_variant(path: Path) -> Variant:
    """Guess the MovieLens variant from the files in ``path``."""
    if (path / "u.data").exists():
        return "100k"
    if (path / "movies.dat").exists():
        return "1m"
    if (path / "movies.csv").exists() and (path / "ratings.csv").exists():
        return "latest-small"
    raise DataValidationError(
        "not a MovieLens folder: expected u.data (100K), movies.dat (1M) or "
        "movies.csv + ratings.csv (latest-small)",
        file=path,
    )


def _read_latin1(path: Path, columns: list[str], sep: str) -> pl.DataFrame:
    """Read a headerless latin-1 MovieLens file as strings, adding ROW (= line number)."""
    if not path.is_file():
        raise DataValidationError("file not found", file=path)
    text = path.read_bytes().decode("latin-1")
    if sep == "::":
        text = text.replace("::", _SEP)
        sep = _SEP
    lines = text.splitlines()
    if not lines:
        raise DataValidationError("file is empty", file=path)
    for i, line in enumerate(lines, start=1):
        if line.count(sep) != len(columns) - 1 and line.strip():
            raise DataValidationError(
                f"expected {len(columns)} fields separated by {sep!r}, got {line.count(sep) + 1}",
                file=path,
                row=i,
                field=columns[min(line.count(sep), len(columns) - 1)],
            )
    df = pl.read_csv(
        text.encode("utf-8"),
        separator=sep,
        has_header=False,
        new_columns=columns,
        infer_schema=False,
        quote_char=None,
    )
    return df.with_columns(pl.int_range(1, df.height + 1, dtype=pl.Int64).alias(ROW))


def _find_ratings_dat(path: Path) -> Path:
    direct = path / "ratings.dat"
    if direct.exists():
        return direct
    nested = sorted(path.glob("*/ratings.dat"))
    if nested:
        return nested[0]
    raise DataValidationError(
        "ratings.dat not found (pass ratings=PATH to point at it)", file=direct
    )


def _load_100k(path: Path, ratings: Path | None) -> tuple[Source, Source, Source]:
    r_file = ratings or path / "u.data"
    inter = _read_latin1(r_file, ["user_id", "item_id", "rating", "timestamp"], "\t")
    i_file = path / "u.item"
    cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *GENRES_100K]
    items = _read_latin1(i_file, cols, "|")
    # the "unknown" flag (item 267 and a few others) says nothing: not kept as a genre
    flags = [pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in GENRES_100K[1:]]
    items = items.with_columns(
        genres=pl.concat_list(flags).list.drop_nulls(),
        year=pl.col("release_date").str.slice(-4).cast(pl.Int32, strict=False),
    ).select("item_id", "title", "year", "genres", "release_date", "imdb_url", ROW)
    items = split_titles(items)
    u_file = path / "u.user"
    users = _read_latin1(u_file, ["user_id", "age", "gender", "occupation", "zip_code"], "|")
    return Source(inter, str(r_file)), Source(items, str(i_file)), Source(users, str(u_file))


def _load_1m(path: Path, ratings: Path | None) -> tuple[Source, Source, Source]:
    r_file = ratings or _find_ratings_dat(path)
    inter = _read_latin1(r_file, ["user_id", "item_id", "rating", "timestamp"], "::")
    i_file = path / "movies.dat"
    items = _read_latin1(i_file, ["item_id", "title", "genres"], "::")
    items = split_titles(items)
    u_file = path / "users.dat"
    users = _read_latin1(u_file, ["user_id", "gender", "age", "occupation", "zip_code"], "::")
    occupations = {str(i): o for i, o in enumerate(OCCUPATIONS_1M)}
    users = users.with_columns(
        pl.col("age").replace(AGES_1M),
        pl.col("occupation").replace(occupations),
    ).select("user_id", "age", "gender", "occupation", "zip_code", ROW)
    return Source(inter, str(r_file)), Source(items, str(i_file)), Source(users, str(u_file))


def load_movielens(
    path: str | Path,
    variant: Variant | None = None,
    label_threshold: float = 4.0,
    rejects_dir: str | Path | None = None,
    *,
    ratings: str | Path | None = None,
) -> Dataset:
    """Load a MovieLens folder (100K, 1M or latest-small; auto-detected) into a Dataset.

    ``label = 1 if rating >= label_threshold else 0``. ``ratings`` overrides the ratings
    file (e.g. the 1M subset ``ratings_subset_users1-2999/ratings.dat``, found by default).
    Titles lose their year suffix (``"Toy Story (1995)"`` -> ``"Toy Story"``, year 1995) and
    trailing articles move to the front (``"Godfather, The"`` -> ``"The Godfather"``).
    """
    path = Path(path)
    variant = variant.removeprefix("ml-") if variant else detect_variant(path)  # "ml-100k" ok
    rfile = Path(ratings) if ratings is not None else None
    name = f"ml-{variant}"
    if variant == "latest-small":
        ds = load_table_dataset(
            rfile or path / "ratings.csv",
            path / "movies.csv",
            None,
            {"user_id": "userId", "item_id": "movieId", "title": "title", "genres": "genres"},
            label_threshold=label_threshold,
            timestamp_unit="s",
            name=name,
            rejects_dir=rejects_dir,
        )
        ds.items = split_titles(ds.items).with_columns(
            pl.col("genres").list.filter(pl.element() != "(no genres listed)")
        )
        ds.meta["variant"] = variant
        return ds
    loaders = {"100k": _load_100k, "1m": _load_1m}
    if variant not in loaders:
        raise ConfigError(f"unknown MovieLens variant {variant!r}; use 100k, 1m or latest-small")
    inter, items, users = loaders[variant](path, rfile)
    return assemble_dataset(
        name,
        inter,
        items,
        users,
        scenario="movies",
        label_threshold=label_threshold,
        timestamp_unit="s",
        rejects_dir=rejects_dir,
        meta={"variant": variant, "encoding": "latin-1"},
    )
