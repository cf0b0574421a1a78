"""Demo dataset: public facts only in the files, deterministic, ratings driven by hidden traits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from kar.data import load_demo, make_time_split, simulate_demo, write_demo_dataset
from kar.data.demo import HIDDEN_TRAITS, load_catalog


def test_catalog_is_sane() -> None:
    cat = load_catalog()
    assert cat.height >= 300
    assert cat.select(pl.struct("title", "year").is_unique().all()).item()
    assert cat["year"].min() >= 1930 and cat["year"].max() <= 2020
    assert cat["tone"].is_between(1, 5).all() and cat["acclaim"].is_between(1, 5).all()
    godfather = cat.filter(pl.col("title") == "The Godfather").row(0, named=True)
    assert (godfather["year"], godfather["director"]) == (1972, "Francis Ford Coppola")
    assert cat.filter(pl.col("title") == "Spirited Away")["director"][0] == "Hayao Miyazaki"


def test_write_and_load_demo(tmp_path: Path) -> None:
    paths = write_demo_dataset(tmp_path, n_users=30, seed=1)
    assert set(paths) == {"items", "users", "interactions"}
    items_csv = pl.read_csv(paths["items"])
    assert items_csv.columns == ["item_id", "title", "year", "genres", "creator"]
    for hidden in ("tone", "acclaim", *HIDDEN_TRAITS):
        assert hidden not in items_csv.columns
    assert pl.read_csv(paths["users"]).columns == ["user_id", "age_group", "gender"]
    ds = load_demo(tmp_path)
    assert ds.scenario == "demo" and ds.name == "demo"
    assert ds.rejects.height == 0 and ds.users.height == 30 and ds.items.height == 300
    per_user = ds.interactions.group_by("user_id").len()["len"]
    assert per_user.min() >= 40 and per_user.max() <= 80
    span = ds.interactions["timestamp"].max() - ds.interactions["timestamp"].min()
    assert 300 < span.days <= 730
    assert set(ds.interactions["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 0.3 < ds.interactions["label"].mean() < 0.75
    assert not ds.items["creator"].is_null().any()
    make_time_split(ds)  # usable by the next stage


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = write_demo_dataset(tmp_path / "a", n_users=20, seed=7)
    b = write_demo_dataset(tmp_path / "b", n_users=20, seed=7)
    c = write_demo_dataset(tmp_path / "c", n_users=20, seed=8)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes()
    assert a["interactions"].read_bytes() != c["interactions"].read_bytes()
    assert a["items"].read_bytes() == c["items"].read_bytes()  # the catalog does not move


def test_ratings_depend_on_hidden_traits() -> None:
    world = simulate_demo(n_users=200, seed=0)
    inter = world.interactions.join(world.items, on="item_id").join(world.users, on="user_id")
    rating = inter["rating"].to_numpy()
    assert np.corrcoef(inter["affinity"].to_numpy(), rating)[0, 1] > 0.6
    # the tone and acclaim parts alone, which no public column carries, predict ratings
    tone = (inter["w_tone"] * inter["dark_light"]).to_numpy()
    acclaim = (inter["w_acclaim"] * inter["acclaim_z"]).to_numpy()
    assert np.corrcoef(tone, rating)[0, 1] > 0.2
    assert np.corrcoef(acclaim, rating)[0, 1] > 0.2
    # a user's tone taste flips how they rate dark films
    dark = inter.filter(pl.col("dark_light") < 0)
    lovers = dark.filter(pl.col("w_tone") < -0.8)["rating"].mean()
    haters = dark.filter(pl.col("w_tone") > 0.8)["rating"].mean()
    assert lovers - haters > 0.7
