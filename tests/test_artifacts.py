"""One save / load shape for every artifact (kar.artifacts, kar.plugins.ARTIFACTS): each
registered kind saves, loads back equal, refuses another kind's folder and a damaged
manifest in one line, and still loads a folder written before manifests existed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kar.adaptor import AdaptorConfig, build_adaptor
from kar.adaptor.codes import KnowledgeCodebooks
from kar.adaptor.trained import TrainedAdaptor
from kar.artifacts import MANIFEST_FILE, Artifact, read_manifest
from kar.embedding.tower import TowerConfig, UserTower, train_user_tower
from kar.encoding import EntityVectors
from kar.errors import ConfigError
from kar.models.toydata import random_knowledge
from kar.plugins import ARTIFACTS


def _vectors() -> EntityVectors:
    users = random_knowledge([f"u{i}" for i in range(6)], 5, seed=0)
    items = random_knowledge([f"i{i}" for i in range(9)], 5, seed=1)
    return EntityVectors(users, items, 5, "test-encoder")


def _adaptor() -> TrainedAdaptor:
    torch.manual_seed(0)
    config = AdaptorConfig(out_dim=4)
    return TrainedAdaptor(config, build_adaptor(config, 5), encoder="e", metrics={"auc": 0.7})


def _codebooks() -> KnowledgeCodebooks:
    vectors = _vectors()
    return KnowledgeCodebooks.fit(vectors.users, vectors.items, 3, seed=0)


def _tower() -> UserTower:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((12, 8)).astype(np.float32)
    sequences = [rng.integers(0, 12, size=6) for _ in range(10)]
    config = TowerConfig(max_len=4, d_model=16, layers=1, heads=2, epochs=1, batch_size=16)
    return train_user_tower(items, sequences, np.ones(12, bool), config, progress=False)


def _same(kind: str, a: Any, b: Any) -> None:
    """The two objects hold the same data (what each kind's users read)."""
    if kind == "encoded_vectors":
        assert a.users.equals(b.users) and a.items.equals(b.items)
        assert (a.dim, a.encoder_id) == (b.dim, b.encoder_id)
    elif kind == "trained_adaptor":
        x = torch.randn(3, 5)
        assert torch.equal(a.module.encode("item", x), b.module.encode("item", x))
        assert (a.config, a.encoder, a.metrics) == (b.config, b.encoder, b.metrics)
    elif kind == "knowledge_codebooks":
        assert np.array_equal(a.user.centroids, b.user.centroids)
        assert (a.size, a.seed, a.fingerprint) == (b.size, b.seed, b.fingerprint)
    else:
        histories = [np.array([1, 2, 3]), np.array([4])]
        assert np.allclose(a.user_vectors(histories), b.user_vectors(histories))


MAKERS = {
    "encoded_vectors": _vectors,
    "trained_adaptor": _adaptor,
    "knowledge_codebooks": _codebooks,
    "user_tower": _tower,
}


def _target(tmp_path: Path, kind: str) -> Path:
    """Where each kind saves: a folder, or one file for the codebooks."""
    return tmp_path / ("codebook.npz" if kind == "knowledge_codebooks" else kind)


def test_every_registered_artifact_has_a_maker_here() -> None:
    assert set(ARTIFACTS) == set(MAKERS)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_save_then_load_gives_the_same_artifact(kind: str, tmp_path: Path) -> None:
    cls = ARTIFACTS.load(kind)
    assert isinstance(cls, Artifact) and kind == cls.KIND
    original = MAKERS[kind]()
    path = original.save(_target(tmp_path, kind))
    _same(kind, original, cls.load(path))
    if path.is_dir():  # a folder artifact says what it is and which files it holds
        meta = read_manifest(path, kind)
        assert meta["kind"] == kind and meta["format_version"] >= 1
        assert all((path / name).is_file() for name in meta["files"])


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_another_kinds_artifact_is_refused_in_one_line(kind: str, tmp_path: Path) -> None:
    other = "user_tower" if kind == "encoded_vectors" else "encoded_vectors"
    if kind == "knowledge_codebooks":  # one file: its embedded manifest names another kind
        path = _codebooks().save(tmp_path / "codebook.npz")
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        meta = {**json.loads(str(arrays["meta"])), "kind": other}
        np.savez(path, **{**arrays, "meta": np.array(json.dumps(meta))})
    else:
        path = MAKERS[other]().save(tmp_path / "other")
        for name in json.loads((path / MANIFEST_FILE).read_text())["files"]:
            if not (path / name).exists():
                pytest.fail(f"{other} did not write {name}")
        # give the folder the files this kind checks for, so only the manifest tells
        for name in read_manifest(MAKERS[kind]().save(tmp_path / "mine"), kind)["files"]:
            if not (path / name).exists():
                (path / name).write_bytes((tmp_path / "mine" / name).read_bytes())
    with pytest.raises(ConfigError) as caught:
        ARTIFACTS.load(kind).load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert f"holds artifact kind {other!r}, expected {kind!r}" in message


@pytest.mark.parametrize("kind", ["encoded_vectors", "trained_adaptor", "user_tower"])
def test_damaged_manifest_and_missing_files_are_one_line(kind: str, tmp_path: Path) -> None:
    path = MAKERS[kind]().save(tmp_path / kind)
    (path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="damaged manifest") as caught:
        ARTIFACTS.load(kind).load(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="no .* folder there"):
        ARTIFACTS.load(kind).load(tmp_path / "absent")


@pytest.mark.parametrize("kind", ["encoded_vectors", "trained_adaptor", "user_tower"])
def test_a_folder_saved_before_manifests_still_loads(kind: str, tmp_path: Path) -> None:
    original = MAKERS[kind]()
    path = original.save(tmp_path / kind)
    (path / MANIFEST_FILE).unlink()
    _same(kind, original, ARTIFACTS.load(kind).load(path))


def test_a_resave_removes_the_old_manifest_until_the_files_are_written(tmp_path: Path) -> None:
    from kar.artifacts import prepare_folder

    path = _vectors().save(tmp_path / "v")
    assert (path / MANIFEST_FILE).is_file()
    prepare_folder(path)  # what save does first: an interrupted save leaves no manifest
    assert not (path / MANIFEST_FILE).exists()
