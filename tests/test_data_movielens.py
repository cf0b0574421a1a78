"""MovieLens loaders on the real files (100K, 1M subset) and a hand-made latest-small folder."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kar.data import detect_variant, load_movielens, split_title
from kar.data.schema import INTERACTION_SCHEMA, ITEM_REQUIRED, TIMESTAMP
from kar.errors import DataValidationError


@pytest.fixture(scope="module")
def ml100k(ml100k_dir: Path):
    return load_movielens(ml100k_dir)


def test_100k_counts_and_schema(ml100k) -> None:
    assert ml100k.name == "ml-100k" and ml100k.scenario == "movies"
    assert ml100k.interactions.height == 100_000
    assert ml100k.items.height == 1682
    assert ml100k.users.height == 943
    assert ml100k.interactions.schema == pl.Schema(INTERACTION_SCHEMA)
    for col, dtype in ITEM_REQUIRED.items():
        assert ml100k.items.schema[col] == dtype
    assert ml100k.rejects is not None and ml100k.rejects.height == 0
    assert ml100k.meta["label_rule"] == "label = 1 if rating >= 4 else 0"


def test_100k_values(ml100k) -> None:
    # first line of u.data: 196 242 3 881250949
    row = ml100k.interactions.filter((pl.col("user_id") == "196") & (pl.col("item_id") == "242"))
    assert row.height == 1
    assert row["rating"][0] == 3.0 and row["label"][0] == 0
    assert row["timestamp"][0].timestamp() == 881250949
    assert row.schema["timestamp"] == TIMESTAMP
    labels = ml100k.interactions.select((pl.col("rating") >= 4).cast(pl.Int8) == pl.col("label"))
    assert labels.to_series().all()
    toy = ml100k.items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["title"] == "Toy Story" and toy["year"] == 1995
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    godfather = ml100k.items.filter(pl.col("item_id") == "127").row(0, named=True)
    assert godfather["title"] == "The Godfather" and godfather["year"] == 1972
    unknown = ml100k.items.filter(pl.col("item_id") == "267").row(0, named=True)
    assert unknown["year"] is None  # no year anywhere: null, not a guess
    user = ml100k.users.filter(pl.col("user_id") == "1").row(0, named=True)
    assert user == {
        "user_id": "1",
        "age": "24",
        "gender": "M",
        "occupation": "technician",
        "zip_code": "85711",
    }


def test_100k_latin1_titles(ml100k) -> None:
    # u.item is latin-1: accented titles must decode, not turn into U+FFFD
    titles = ml100k.items["title"]
    assert not titles.str.contains("\ufffd").any()
    assert titles.str.contains("é").any()


def test_1m_subset_loads(ml1m_dir: Path) -> None:
    ds = load_movielens(ml1m_dir, rejects_dir=None)
    assert detect_variant(ml1m_dir) == "1m"
    assert ds.interactions.height == 487_650
    assert ds.interactions["user_id"].n_unique() == 2999
    assert ds.items.height == 3883 and ds.users.height == 6040
    first = ds.interactions.filter((pl.col("user_id") == "1") & (pl.col("item_id") == "1193"))
    assert first["rating"][0] == 5.0 and first["timestamp"][0].timestamp() == 978300760
    user1 = ds.users.filter(pl.col("user_id") == "1").row(0, named=True)
    assert user1["age"] == "Under 18" and user1["occupation"] == "K-12 student"
    assert ds.rejects.height == 0


def test_1m_ratings_override(ml1m_dir: Path, tmp_path: Path) -> None:
    lines = (ml1m_dir / "ratings_subset_users1-2999" / "ratings.dat").read_text().splitlines()
    small = tmp_path / "r.dat"
    small.write_text("\n".join(lines[:50]) + "\n")
    ds = load_movielens(ml1m_dir, variant="1m", ratings=small, label_threshold=5)
    assert ds.interactions.height == 50
    assert ds.interactions.filter(pl.col("label") == 1)["rating"].min() == 5.0


def _write_latest_small(folder: Path) -> None:
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Pokémon Heroes (2003),Animation|Children\n"
        "4,Some Film Without Year,(no genres listed)\n",
        encoding="utf-8",
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        "1,2,3.5,964981247\n"
        "2,3,5.0,964982224\n"
        "2,99,4.0,964982224\n"  # unknown movie -> rejected
        "3,4,,964982224\n",  # null rating -> rejected
        encoding="utf-8",
    )


def test_latest_small_format(tmp_path: Path) -> None:
    folder = tmp_path / "ml-latest-small"
    _write_latest_small(folder)
    ds = load_movielens(folder, rejects_dir=tmp_path / "rejects")
    assert ds.meta["variant"] == "latest-small"
    assert ds.interactions.height == 3
    assert ds.interactions.sort("item_id")["label"].to_list() == [1, 0, 1]
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items["2"]["title"] == "The American President" and items["2"]["year"] == 1995
    assert items["3"]["title"] == "Pokémon Heroes"
    assert items["4"]["year"] is None and items["4"]["genres"] == []
    assert set(ds.users["user_id"]) == {"1", "2"}
    reasons = dict(zip(ds.rejects["row"], ds.rejects["reason"], strict=True))
    assert reasons == {
        4: "item_id not in items table",
        5: "missing rating (labels come from ratings)",
    }
    written = pl.read_csv(tmp_path / "rejects" / "ml-latest-small_rejects.csv")
    assert written.height == 2 and "reason" in written.columns


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Toy Story (1995)", ("Toy Story", 1995)),
        ("Shawshank Redemption, The (1994)", ("The Shawshank Redemption", 1994)),
        (
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            ("The City of Lost Children (Cité des enfants perdus, La)", 1995),
        ),
        ("Babylon 5", ("Babylon 5", None)),
        ("Fawlty Towers (1975-1979)", ("Fawlty Towers", 1975)),
    ],
)
def test_split_title(raw: str, expected: tuple[str, int | None]) -> None:
    assert split_title(raw) == expected


def test_bad_100k_row_names_file_and_line(tmp_path: Path, ml100k_dir: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    for name in ("u.item", "u.user"):
        (folder / name).write_bytes((ml100k_dir / name).read_bytes())
    (folder / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\n")
    with pytest.raises(DataValidationError) as err:
        load_movielens(folder)
    assert err.value.row == 2 and str(folder / "u.data") in str(err.value)


def test_not_movielens(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="not a MovieLens folder"):
        load_movielens(tmp_path)
