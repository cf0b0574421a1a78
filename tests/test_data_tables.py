"""Generic CSV / Parquet loader and the validation rules (fatal errors and rejects)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kar.data import ColumnMapping, load_table_dataset
from kar.errors import ConfigError, DataValidationError

ITEMS = (
    "item_id,title,year,genres,creator,country\n"
    "a,Alpha,2001,Drama|Comedy,Ann Lee,FR\n"
    "b,Beta,,Horror,,US\n"
    "c,Gamma,1999,,Bob Ray,\n"
)
USERS = "user_id,age_group\n1,18-24\n2,25-34\n"


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "items": _write(tmp_path / "items.csv", ITEMS),
        "users": _write(tmp_path / "users.csv", USERS),
    }


def test_generic_csv_with_mapping(tmp_path: Path, files: dict[str, Path]) -> None:
    inter = _write(
        tmp_path / "inter.csv",
        "uid,iid,when,stars\n"
        "1,a,2024-01-02T03:04:05Z,5\n"
        "1,b,2024-01-02 03:04:06,2\n"  # naive -> UTC
        "2,c,2024-01-03T00:00:00+02:00,4.5\n",
    )
    mapping = {"user_id": "uid", "item_id": "iid", "timestamp": "when", "rating": "stars"}
    ds = load_table_dataset(inter, files["items"], files["users"], mapping, name="shop")
    assert ds.name == "shop" and ds.interactions.height == 3
    rows = ds.interactions.sort("item_id").to_dicts()
    assert [r["label"] for r in rows] == [1, 0, 1]
    assert rows[1]["timestamp"].isoformat() == "2024-01-02T03:04:06+00:00"
    assert rows[2]["timestamp"].isoformat() == "2024-01-02T22:00:00+00:00"
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items["a"]["genres"] == ["Drama", "Comedy"] and items["a"]["creator"] == "Ann Lee"
    assert items["b"]["year"] is None and items["c"]["genres"] == []
    assert ds.items["country"].to_list() == ["FR", "US", None]  # extra attribute kept as str
    assert ds.users.columns == ["user_id", "age_group"]


def test_label_column_and_epoch_ms(tmp_path: Path) -> None:
    inter = _write(
        tmp_path / "i.csv",
        "user_id,item_id,timestamp,clicked\nu,x,1700000000000,true\nu,y,1700000001000,0\n",
    )
    ds = load_table_dataset(inter, label_column="clicked", timestamp_unit="ms")
    assert ds.interactions["label"].to_list() == [1, 0]
    assert ds.interactions["rating"].is_null().all()
    assert ds.interactions["timestamp"][0].timestamp() == 1_700_000_000
    assert ds.items["item_id"].to_list() == ["x", "y"]  # no items table: ids only
    assert ds.meta["label_rule"] == "label column"


def test_parquet_and_threshold(tmp_path: Path) -> None:
    path = tmp_path / "i.parquet"
    pl.DataFrame(
        {
            "user_id": [1, 1, 2],
            "item_id": [10, 11, 10],
            "timestamp": pl.Series([1, 2, 3]).cast(pl.Datetime("ms")),
            "rating": [3.0, 4.0, 5.0],
        }
    ).write_parquet(path)
    ds = load_table_dataset(path, label_threshold=5.0)
    assert ds.interactions["user_id"].to_list() == ["1", "1", "2"]
    assert ds.interactions["label"].to_list() == [0, 0, 1]
    assert ds.interactions.schema["timestamp"] == pl.Datetime("us", "UTC")


def test_missing_column_names_file_field_and_found(tmp_path: Path) -> None:
    inter = _write(tmp_path / "i.csv", "user,item_id,timestamp,rating\n1,a,1,4\n")
    with pytest.raises(DataValidationError) as err:
        load_table_dataset(inter)
    e = err.value
    assert e.file == str(inter) and e.field == "user_id"
    assert "columns found" in str(e) and "'user'" in str(e)


def test_explicit_optional_mapping_missing_is_fatal(tmp_path: Path, files) -> None:
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp,rating\n1,a,1,4\n")
    items = _write(tmp_path / "items.csv", "item_id,title\na,A\n")
    with pytest.raises(DataValidationError) as err:
        load_table_dataset(inter, items, mapping={"creator": "director"})
    assert err.value.field == "director" and err.value.file == str(items)
    ds = load_table_dataset(inter, items)  # not set explicitly: filled with nulls
    assert ds.items["creator"].to_list() == [None]


def test_duplicate_item_id_names_file_row_field(tmp_path: Path) -> None:
    items = _write(tmp_path / "items.csv", "item_id,title\na,A\nb,B\na,A again\n")
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp,rating\n1,a,1,4\n")
    with pytest.raises(DataValidationError) as err:
        load_table_dataset(inter, items)
    e = err.value
    assert (e.file, e.row, e.field) == (str(items), 3, "item_id")
    assert "duplicate item_id 'a'" in str(e) and "row 3" in str(e)


def test_duplicate_user_id(tmp_path: Path, files) -> None:
    users = _write(tmp_path / "users.csv", "user_id,age\n1,20\n2,30\n2,31\n")
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp,rating\n1,a,1,4\n")
    with pytest.raises(DataValidationError) as err:
        load_table_dataset(inter, files["items"], users)
    assert (err.value.row, err.value.field) == (3, "user_id")


def test_unparseable_timestamp_names_row(tmp_path: Path) -> None:
    inter = _write(
        tmp_path / "i.csv",
        "user_id,item_id,timestamp,rating\n1,a,2024-01-01T00:00:00Z,4\n1,b,yesterday,3\n",
    )
    with pytest.raises(DataValidationError) as err:
        load_table_dataset(inter)
    e = err.value
    assert (e.file, e.row, e.field) == (str(inter), 2, "timestamp")
    assert "'yesterday'" in str(e)


def test_unparseable_epoch_and_rating(tmp_path: Path) -> None:
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp,rating\n1,a,1,4\n1,b,2,x\n")
    with pytest.raises(DataValidationError) as err:
        load_table_dataset(inter)
    assert (err.value.row, err.value.field) == (2, "rating")
    inter2 = _write(tmp_path / "j.csv", "user_id,item_id,timestamp,rating\n1,a,1,4\n1,b,2.5e,4\n")
    for unit in ("s", None):  # without a unit, the first value says "epoch seconds"
        with pytest.raises(DataValidationError) as err:
            load_table_dataset(inter2, timestamp_unit=unit)
        assert (err.value.row, err.value.field) == (2, "timestamp")
        assert "'2.5e'" in str(err.value)


def test_non_utf8_names_file_row_and_field(tmp_path: Path) -> None:
    data = b"user_id,item_id,timestamp,rating\n1,a,1,4\n" + b"2,caf\xe9,2,5\n"
    inter = _write(tmp_path / "i.csv", data)
    with pytest.raises(DataValidationError) as err:
        load_table_dataset(inter)
    e = err.value
    assert (e.file, e.row, e.field) == (str(inter), 2, "item_id")
    assert "UTF-8" in str(e)


def test_rejects_file_with_reasons(tmp_path: Path, files) -> None:
    inter = _write(
        tmp_path / "i.csv",
        "user_id,item_id,timestamp,rating\n"
        "1,a,1,4\n"
        "1,zz,2,4\n"  # unknown item
        "9,a,3,4\n"  # unknown user
        "2,b,4,\n"  # null rating
        ",b,5,3\n"  # missing user id
        "1,a,1,4\n"  # exact duplicate of row 1
        "2,c,,3\n",  # missing timestamp
    )
    ds = load_table_dataset(
        inter, files["items"], files["users"], name="t", rejects_dir=tmp_path / "rej"
    )
    assert ds.interactions.height == 1
    expected = {
        2: "item_id not in items table",
        3: "user_id not in users table",
        4: "missing rating (labels come from ratings)",
        5: "missing user_id",
        6: "duplicate interaction (same user_id, item_id, timestamp)",
        7: "missing timestamp",
    }
    got = dict(zip(ds.rejects["row"], ds.rejects["reason"], strict=True))
    assert got == expected
    written = pl.read_csv(tmp_path / "rej" / "t_rejects.csv", infer_schema=False)
    assert set(written.columns) >= {"table", "file", "row", "reason", "user_id", "item_id"}
    assert written.height == 6 and set(written["file"]) == {str(inter)}
    assert ds.meta["rejected"]["missing timestamp"] == 1
    assert ds.meta["rejects_file"] == str(tmp_path / "rej" / "t_rejects.csv")


def test_item_without_title_is_rejected_with_its_interactions(tmp_path: Path) -> None:
    items = _write(tmp_path / "items.csv", "item_id,title\na,A\nb,\n")
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp,rating\n1,a,1,4\n1,b,2,4\n")
    ds = load_table_dataset(inter, items)
    assert ds.items["item_id"].to_list() == ["a"]
    got = set(zip(ds.rejects["table"], ds.rejects["reason"], strict=True))
    assert got == {("items", "missing title"), ("interactions", "item_id rejected in items table")}


def test_mapping_validation() -> None:
    with pytest.raises(ConfigError, match="invalid column mapping"):
        ColumnMapping.coerce({"userid": "x"})
    assert ColumnMapping.coerce(None).user_id == "user_id"


def test_no_rating_nor_label(tmp_path: Path) -> None:
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp\n1,a,1\n")
    with pytest.raises(DataValidationError, match="rating") as err:
        load_table_dataset(inter)
    assert err.value.file == str(inter)
