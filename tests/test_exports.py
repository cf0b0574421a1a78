"""Exports read back in the shape each CTR library expects.

DeepCTR-Torch and torch-rechub install here without new torch / CUDA, so their own feature
and model classes read the arrays (skipped when not installed). FuxiCTR and RecBole pull in
ray / tensorboard, so their files are parsed the way those libraries parse them: FuxiCTR
scans Parquet with polars and keeps ``type: embedding`` columns as float lists; RecBole
reads tab-separated atomic files whose header is ``name:type`` and splits ``float_seq``
fields on spaces.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from kar.data.movielens import load_movielens
from kar.errors import ConfigError, DataValidationError
from kar.exports import export_knowledge
from kar.models.toydata import random_knowledge

DIM = 6


@pytest.fixture(scope="module")
def knowledge(ml100k_dir):
    """Random vectors keyed by real ML-100K ids (a slice: the first 50 users, 80 items)."""
    ds = load_movielens(ml100k_dir)
    users = random_knowledge(ds.users["user_id"].head(50).to_list(), DIM, seed=0)
    items = random_knowledge(ds.items["item_id"].head(80).to_list(), DIM, seed=1)
    samples = ds.interactions.filter(
        pl.col("user_id").is_in(users["entity_id"].implode())
        & pl.col("item_id").is_in(items["entity_id"].implode())
    ).head(200)
    return users, items, samples


def _gather(out, kind: str, ids: list[str]) -> np.ndarray:
    matrix = np.load(out / f"{kind}_knowledge.npy")
    index = json.loads((out / f"{kind}_index.json").read_text())
    return matrix[[index.get(i, 0) for i in ids]]


def test_fuxictr_parquet_and_feature_config(tmp_path, knowledge):
    users, items, _ = knowledge
    export_knowledge(users, items, "fuxictr", tmp_path)
    config = yaml.safe_load((tmp_path / "feature_config.yaml").read_text())
    cols = {c["name"]: c for c in config["feature_cols"]}
    assert cols["item_knowledge"]["type"] == "embedding"
    assert cols["item_knowledge"]["pretrain_dim"] == DIM
    frame = pl.scan_parquet(tmp_path / "item_knowledge.parquet").collect()  # as FuxiCTR reads
    assert frame.schema["item_knowledge"] == pl.List(pl.Float32)
    assert frame.schema["item_id"] == pl.Utf8
    # FuxiCTR stacks an embedding column into a (N, pretrain_dim) float array
    stacked = np.array(frame["item_knowledge"].to_list(), dtype=np.float32)
    np.testing.assert_array_equal(stacked, np.stack(items["vector"].to_list()))


def test_deepctr_torch_densefeat_reads_arrays(tmp_path, knowledge):
    inputs = pytest.importorskip("deepctr_torch.inputs")
    models = pytest.importorskip("deepctr_torch.models")
    users, items, samples = knowledge
    export_knowledge(users, items, "deepctr", tmp_path)
    x = {
        "user_knowledge": _gather(tmp_path, "user", samples["user_id"].to_list()),
        "item_knowledge": _gather(tmp_path, "item", samples["item_id"].to_list()),
    }
    np.testing.assert_array_equal(
        x["item_knowledge"][0],
        items.filter(pl.col("entity_id") == samples["item_id"][0])["vector"][0].to_numpy(),
    )
    feats = [inputs.DenseFeat("user_knowledge", DIM), inputs.DenseFeat("item_knowledge", DIM)]
    model = models.DeepFM(feats, feats, dnn_hidden_units=(8,), device="cpu", seed=0)
    pred = model.predict(x, batch_size=64)
    assert pred.shape == (samples.height, 1) and np.isfinite(pred).all()
    assert np.unique(pred).size > 1  # the vectors reached the model


def test_torch_rechub_densefeature_reads_arrays(tmp_path, knowledge):
    features = pytest.importorskip("torch_rechub.basic.features")
    layers = pytest.importorskip("torch_rechub.basic.layers")
    import torch

    users, items, samples = knowledge
    export_knowledge(users, items, "rechub", tmp_path)
    feats = [
        features.DenseFeature("user_knowledge", embed_dim=DIM),
        features.DenseFeature("item_knowledge", embed_dim=DIM),
    ]
    x = {
        "user_knowledge": torch.from_numpy(_gather(tmp_path, "user", samples["user_id"].to_list())),
        "item_knowledge": torch.from_numpy(_gather(tmp_path, "item", samples["item_id"].to_list())),
    }
    out = layers.EmbeddingLayer(feats)(x, feats, squeeze_dim=True)  # as rechub DeepFM / WideDeep do
    assert out.shape == (samples.height, 2 * DIM)
    assert torch.equal(out[:, :DIM], x["user_knowledge"])
    # an unknown id gathers the all-zero row 0
    assert not _gather(tmp_path, "user", ["no-such-user"]).any()


def test_recbole_atomic_files(tmp_path, knowledge):
    users, items, _ = knowledge
    u_codes = pl.DataFrame({"entity_id": users["entity_id"], "code": [1] * users.height})
    export_knowledge(users, items, "recbole", tmp_path, user_codes=u_codes, dataset="ml-100k")
    path = tmp_path / "ml-100k.user"
    header = path.read_text().splitlines()[0].split("\t")
    types = dict(h.split(":") for h in header)
    assert types == {
        "user_id": "token",
        "user_knowledge": "float_seq",
        "user_knowledge_code": "token",
    }
    frame = pl.read_csv(path, separator="\t", schema_overrides={h: pl.Utf8 for h in header})
    seqs = [np.array(s.split(" "), dtype=np.float32) for s in frame[header[1]]]
    assert {len(s) for s in seqs} == {DIM}
    np.testing.assert_allclose(np.stack(seqs), np.stack(users["vector"].to_list()), rtol=1e-6)
    assert (
        (tmp_path / "ml-100k.item")
        .read_text()
        .startswith("item_id:token\titem_knowledge:float_seq\n")
    )


def test_bad_input_is_named(tmp_path, knowledge):
    users, items, _ = knowledge
    with pytest.raises(ConfigError, match="unknown export format 'tfrecord'"):
        export_knowledge(users, items, "tfrecord", tmp_path)
    ragged = pl.DataFrame({"entity_id": ["a", "b"], "vector": [[1.0, 2.0], [1.0]]})
    with pytest.raises(DataValidationError, match="'b' has 1 values"):
        export_knowledge(users, ragged, "deepctr", tmp_path)


def test_cli_export_with_codes(tmp_path, knowledge):
    from kar.cli import app
    from kar.project import ProjectFolder, ProjectSettings

    users, items, _ = knowledge
    project = ProjectFolder(tmp_path, ProjectSettings())
    project.save()
    result = CliRunner().invoke(app, ["export", "--format", "fuxictr", "-p", str(tmp_path)])
    assert result.exit_code == 1 and "run `kar train` first" in result.output
    project.knowledge_dir.mkdir(parents=True)
    users.write_parquet(project.knowledge_dir / "user_knowledge.parquet")
    items.write_parquet(project.knowledge_dir / "item_knowledge.parquet")
    args = ["export", "--format", "fuxictr", "--codes", "4", "-p", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(project.artifacts / "exports" / "fuxictr" / "item_knowledge.parquet")
    assert frame["item_knowledge_code"].is_between(1, 4).all()
