"""fetch_dataset: clear offline error, no download when present (never touches the network)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kar.data import fetch_dataset
from kar.errors import KarError


def test_offline_message(tmp_path: Path) -> None:
    with pytest.raises(KarError) as err:
        fetch_dataset("movielens-100k", tmp_path, base_url="http://127.0.0.1:9", timeout=5)
    msg = str(err.value)
    assert "cannot reach files.grouplens.org" in msg and "--data PATH" in msg
    assert "ml-100k.zip" in msg
    assert not (tmp_path / "ml-100k").exists()


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(KarError, match="unknown dataset"):
        fetch_dataset("movielens-20m", tmp_path)


def test_already_present_is_not_downloaded(tmp_path: Path) -> None:
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t1\t5\t1\n")
    # an unreachable URL proves no request was made
    got = fetch_dataset("movielens-100k", tmp_path, base_url="http://127.0.0.1:9")
    assert got == tmp_path / "ml-100k"


def test_download_and_unzip_from_local_file_url(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ml-latest-small.zip", "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n")
        zf.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n")
    got = fetch_dataset("movielens-latest-small", tmp_path / "data", base_url=served.as_uri())
    assert (got / "ratings.csv").exists() and got.name == "ml-latest-small"


def test_zip_slip_refused(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ml-100k.zip", "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(KarError, match="refusing to extract"):
        fetch_dataset("movielens-100k", tmp_path / "data", base_url=served.as_uri())
    assert not (tmp_path / "evil.txt").exists()
