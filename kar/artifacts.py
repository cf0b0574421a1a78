"""One save / load shape for every artifact a stage writes.

An artifact is a folder: its files plus ``manifest.json`` naming what it is (``kind``), its
format version and its metadata. A class is an artifact when it has a ``KIND`` and
``save(directory) -> Path`` / ``load(directory)`` (:class:`Artifact`); it writes its
manifest with :func:`write_manifest` (after its files, so a manifest means a complete
folder) and reads it back with :func:`read_manifest`, which turns a missing, damaged or
foreign folder into one :class:`~kar.errors.ConfigError` line naming the folder. Folders
written before manifests existed still load (their files are checked instead).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from kar.errors import ConfigError

MANIFEST_FILE = "manifest.json"


@runtime_checkable
class Artifact(Protocol):
    """What every saved artifact offers: ``obj.save(folder)`` then ``Cls.load(folder)``."""

    KIND: ClassVar[str]

    def save(self, directory: str | Path) -> Path: ...

    @classmethod
    def load(cls, directory: str | Path) -> Artifact: ...


def prepare_folder(directory: str | Path) -> Path:
    """The folder an artifact is about to be saved into: created, its old manifest removed
    (until :func:`write_manifest` runs again, the folder reads as incomplete)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    return folder


def manifest(kind: str, version: int, **meta: Any) -> dict[str, Any]:
    """The manifest body: ``kind``, ``format_version`` and the artifact's metadata (a
    single-file artifact embeds this dict in its file)."""
    return {"kind": kind, "format_version": version, **meta}


def check_manifest(meta: Any, kind: str, where: str | Path) -> dict[str, Any]:
    """``meta`` if it is a manifest of ``kind``; else one ConfigError line naming ``where``.
    A manifest without ``kind`` (written before kinds existed) is taken as ``kind``."""
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: damaged manifest (not a JSON object)")
    found = meta.get("kind", kind)
    if found != kind:
        raise ConfigError(f"{where}: holds artifact kind {found!r}, expected {kind!r}")
    return meta


def write_manifest(directory: str | Path, kind: str, version: int, **meta: Any) -> Path:
    """Write ``manifest.json`` into ``directory`` (created), atomically (temp + rename):
    call it last in ``save``, so that a manifest means a complete folder."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    body = manifest(kind, version, **meta)
    path = folder / MANIFEST_FILE
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | Path, kind: str, files: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest of the ``kind`` artifact in ``directory``, after checking that the
    folder holds ``files``. A folder written before manifests existed (none there, every
    file present) reads as ``{"kind": kind, "format_version": 0}``."""
    folder, what = Path(directory), kind.replace("_", " ")
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no {what} folder there")
    for name in files:
        if not (folder / name).is_file():
            raise ConfigError(f"{what} folder {folder} lacks {name}")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {"kind": kind, "format_version": 0}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: damaged manifest ({exc}); save the {what} again") from None
    return check_manifest(meta, kind, folder)


def torch_save_atomically(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: a kill mid-write
    leaves the previous file (checkpoints, weights)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
