"""Download a MovieLens dataset from files.grouplens.org (kar does not ship MovieLens)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from kar.errors import KarError

log = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens"
DATASETS: dict[str, tuple[str, str]] = {  # name -> (zip file, a file the folder must hold)
    "movielens-100k": ("ml-100k.zip", "u.data"),
    "movielens-1m": ("ml-1m.zip", "ratings.dat"),
    "movielens-latest-small": ("ml-latest-small.zip", "ratings.csv"),
}


def _extract(archive: Path, dest: Path) -> None:
    """Unzip ``archive`` into ``dest``, refusing members that would land outside it."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (root / member).resolve()
            if not target.is_relative_to(root):
                raise KarError(f"refusing to extract {member!r}: path leaves {root}")
        zf.extractall(root)


def fetch_dataset(
    name: str, dest: str | Path, *, base_url: str = BASE_URL, timeout: float = 60.0
) -> Path:
    """Download and unzip ``name`` into ``dest``; return the dataset folder.

    Nothing is downloaded when the folder is already there. Offline or unreachable server:
    :class:`KarError` telling the user to download the zip by hand and pass ``--data PATH``.
    """
    if name not in DATASETS:
        raise KarError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    zip_name, marker = DATASETS[name]
    dest = Path(dest)
    folder = dest / zip_name.removesuffix(".zip")
    if (folder / marker).exists():
        log.info("%s already present at %s", name, folder)
        return folder
    url = f"{base_url.rstrip('/')}/{zip_name}"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / zip_name
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, archive.open("wb") as f:
                shutil.copyfileobj(resp, f)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise KarError(
                f"cannot reach files.grouplens.org to download {name} ({url}: {reason}). "
                f"Download {zip_name} manually from {BASE_URL}/, unzip it, and pass "
                f"--data PATH (the unzipped folder)."
            ) from None
        try:
            _extract(archive, dest)
        except zipfile.BadZipFile:
            raise KarError(f"downloaded file from {url} is not a zip archive") from None
    if not (folder / marker).exists():
        raise KarError(f"{url} did not contain {folder.name}/{marker}")
    log.info("downloaded %s to %s", name, folder)
    return folder
