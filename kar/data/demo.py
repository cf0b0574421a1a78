"""The kar demo dataset: well-known films (public facts) and SYNTHETIC users.

Each film has public columns (title, year, director, genres) and hidden traits that the
CTR model never sees but an LLM may know: tone (dark 1 .. 5 light, hand-set), acclaim
(1 .. 5, hand-set "classic" status), pace (from genres) and era (from year). Synthetic users
have latent tastes over genres and these traits; what they watch and how they rate it
follows a logistic / ordinal model of taste x traits plus noise (docs/data.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from .schema import Dataset
from .tables import load_table_dataset

CATALOG_FILE = "demo_catalog.csv"
START = datetime(2022, 1, 1, tzinfo=UTC)
SPAN_DAYS = 730  # interactions fall within about two years
AGE_GROUPS = ["18-24", "25-34", "35-44", "45-54", "55+"]
_FAST = {"Action", "Thriller", "Adventure", "Horror", "Sci-Fi"}
_SLOW = {"Drama", "Romance", "Documentary", "Film-Noir", "Western"}
HIDDEN_TRAITS = ("dark_light", "acclaim_z", "era_z", "pace")


@dataclass
class DemoWorld:
    """The full simulation, hidden parts included (for analysis and tests only)."""

    items: pl.DataFrame  # public columns + hidden traits
    users: pl.DataFrame  # public columns + latent tastes
    interactions: pl.DataFrame  # user_id, item_id, timestamp, rating, affinity (hidden)


def load_catalog() -> pl.DataFrame:
    """The shipped film catalog with its hand-set hidden fields (tone, acclaim)."""
    text = resources.files("kar.data").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    df = pl.read_csv(text.encode(), schema_overrides={"year": pl.Int32})
    return df.with_columns(
        pl.format("f{}", pl.int_range(1, df.height + 1).cast(pl.Utf8).str.zfill(3)).alias("item_id")
    )


def _pick_items(catalog: pl.DataFrame, n_items: int | None) -> pl.DataFrame:
    """A seed-independent subset: the films whose title hash is smallest (spread over eras)."""
    if n_items is None or n_items >= catalog.height:
        return catalog
    key = catalog.get_column("title").map_elements(
        lambda t: hashlib.sha256(t.encode()).hexdigest(), return_dtype=pl.Utf8
    )
    return (
        catalog.with_columns(key.alias("__k")).sort("__k").head(n_items).drop("__k").sort("item_id")
    )


def _item_traits(items: pl.DataFrame, genres: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Genre one-hot (rows normalised) and hidden trait matrix (dark_light, acclaim, era, pace)."""
    glists = [g.split("|") for g in items.get_column("genres").to_list()]
    onehot = np.array([[float(g in gl) for g in genres] for gl in glists])
    onehot /= np.maximum(onehot.sum(1, keepdims=True), 1.0)
    tone = items.get_column("tone").to_numpy().astype(float)
    acclaim = items.get_column("acclaim").to_numpy().astype(float)
    year = items.get_column("year").to_numpy().astype(float)
    pace = np.array(
        [(len(set(gl) & _FAST) - len(set(gl) & _SLOW)) / max(len(gl), 1) for gl in glists]
    )
    traits = np.stack(
        [
            (tone - 3.0) / 2.0,
            (acclaim - acclaim.mean()) / acclaim.std(),
            (year - 1985.0) / 25.0,
            pace,
        ],
        axis=1,
    )
    return onehot, traits


DEMO_USERS = 150  # keeps `kar quickstart` well under 15 minutes on 2 CPU cores


def simulate_demo(n_users: int = DEMO_USERS, seed: int = 0, n_items: int | None = 300) -> DemoWorld:
    """Simulate the demo world, deterministically for a given (n_users, seed, n_items)."""
    if n_users < 1:
        raise ValueError("n_users must be >= 1")
    rng = np.random.default_rng(seed)
    items = _pick_items(load_catalog(), n_items)
    genres = sorted({g for gl in items.get_column("genres").to_list() for g in gl.split("|")})
    onehot, traits = _item_traits(items, genres)
    n_i = items.height

    # latent tastes: genre affinities (two favourites, one dislike), trait weights, bias
    g_aff = rng.normal(0.0, 0.5, (n_users, len(genres)))
    for u in range(n_users):
        fav = rng.choice(len(genres), 3, replace=False)
        g_aff[u, fav[:2]] += 1.5
        g_aff[u, fav[2]] -= 1.5
    age = rng.integers(0, len(AGE_GROUPS), n_users)
    w = np.stack(
        [
            rng.normal(0.0, 1.2, n_users),  # tone: + likes light films, - likes dark ones
            np.abs(rng.normal(0.8, 0.5, n_users)),  # taste for acclaimed classics
            rng.normal(0.0, 0.5, n_users) - 0.35 * (age - 2),  # era: older users, older films
            rng.normal(0.0, 0.8, n_users),  # pace
        ],
        axis=1,
    )
    bias = rng.normal(0.0, 0.4, n_users)
    affinity = bias[:, None] + g_aff @ onehot.T + w @ traits.T  # (users, items)

    # what each user watches: Gumbel top-k over popularity + taste (no repeats)
    popularity = 0.6 * traits[:, 1]
    counts = rng.integers(40, 81, n_users).clip(max=n_i)
    gumbel = rng.gumbel(size=(n_users, n_i))
    keys = 0.7 * affinity + popularity[None, :] + gumbel
    rows: list[tuple[int, int, float, float]] = []
    for u in range(n_users):
        chosen = np.argsort(-keys[u])[: counts[u]]
        span = rng.uniform(30, SPAN_DAYS)
        start = rng.uniform(0, SPAN_DAYS - span)
        secs = np.sort(rng.uniform(start, start + span, counts[u]) * 86400).round()
        rng.shuffle(chosen)  # watch order is random
        for i, s in zip(chosen, secs, strict=True):
            rows.append((u, int(i), float(s), float(affinity[u, i])))
    u_idx, i_idx, secs, aff = (np.array(c) for c in zip(*rows, strict=True))
    latent = 2.4 + 0.9 * aff + rng.normal(0.0, 0.6, len(aff))
    ratings = np.clip(np.rint(latent), 1, 5)

    user_ids = [f"u{u + 1:04d}" for u in range(n_users)]
    item_ids = items.get_column("item_id").to_list()
    ts = [START + timedelta(seconds=float(s)) for s in secs]
    interactions = pl.DataFrame(
        {
            "user_id": [user_ids[u] for u in u_idx],
            "item_id": [item_ids[i] for i in i_idx],
            "timestamp": pl.Series(ts, dtype=pl.Datetime("us", "UTC")),
            "rating": ratings,
            "affinity": aff,
        }
    ).sort("user_id", "timestamp", "item_id")
    users = pl.DataFrame(
        {
            "user_id": user_ids,
            "age_group": [AGE_GROUPS[a] for a in age],
            "gender": rng.choice(["F", "M"], n_users).tolist(),
            "w_tone": w[:, 0],
            "w_acclaim": w[:, 1],
            "w_era": w[:, 2],
            "w_pace": w[:, 3],
            "bias": bias,
            "favourite_genres": [
                [genres[j] for j in np.argsort(-g_aff[u])[:2]] for u in range(n_users)
            ],
        }
    )
    hidden = pl.DataFrame(traits, schema=list(HIDDEN_TRAITS), orient="row")
    items = pl.concat([items, hidden], how="horizontal")
    return DemoWorld(items=items, users=users, interactions=interactions)


def write_demo_dataset(
    dir: str | Path, n_users: int = DEMO_USERS, seed: int = 0, n_items: int | None = 300
) -> dict[str, Path]:
    """Write items.csv, users.csv, interactions.csv (UTF-8, generic format) into ``dir``.

    Only public columns are written: the hidden traits and tastes stay in the generator.
    """
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    world = simulate_demo(n_users=n_users, seed=seed, n_items=n_items)
    paths = {name: out / f"{name}.csv" for name in ("items", "users", "interactions")}
    world.items.select(
        "item_id", "title", "year", "genres", pl.col("director").alias("creator")
    ).write_csv(paths["items"])
    world.users.select("user_id", "age_group", "gender").write_csv(paths["users"])
    world.interactions.select(
        "user_id",
        "item_id",
        pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        pl.col("rating").cast(pl.Int64),
    ).write_csv(paths["interactions"])
    return paths


def load_demo(dir: str | Path, rejects_dir: str | Path | None = None) -> Dataset:
    """Load a folder written by :func:`write_demo_dataset` (label = rating >= 4)."""
    d = Path(dir)
    ds = load_table_dataset(
        d / "interactions.csv",
        d / "items.csv",
        d / "users.csv",
        name="demo",
        scenario="demo",
        label_threshold=4.0,
        rejects_dir=rejects_dir,
    )
    ds.meta["synthetic_users"] = True
    return ds
