"""Bad inputs a user can make (issue 30): tables, kar.yaml, experts YAML, store URLs.

Each is one line naming the file / row / field and exit code 1, never a traceback; the CLI
is the real ``kar`` in a subprocess (only commands that stop before loading a model).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from kar.adaptor.config import AdaptorConfig
from kar.data import load_table_dataset
from kar.errors import ConfigError, DataValidationError
from kar.generation.store import KnowledgeStore
from kar.project import ProjectFolder

KAR = Path(sys.executable).with_name("kar")
INTERACTIONS = "user_id,item_id,timestamp,rating\n"


def run_kar(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    return subprocess.run(
        [str(KAR), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit 1, no traceback, and an ``error:`` line naming every one of ``names``."""
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def make_project(root: Path, **settings: object) -> Path:
    """A demo project (kar init) with ``settings`` merged into its kar.yaml."""
    result = run_kar("init", str(root), "--users", "5", cwd=root.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    config = root / "kar.yaml"
    data = yaml.safe_load(config.read_text())
    for key, value in settings.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return root


def table_project(tmp_path: Path, interactions: bytes | str, **dataset: object) -> Path:
    """A project whose dataset is a table (``data/mine.csv`` holding ``interactions``)."""
    root = make_project(tmp_path / "proj")
    target = root / "data" / "mine.csv"
    target.write_bytes(interactions if isinstance(interactions, bytes) else interactions.encode())
    settings = {"kind": "table", "path": "data/mine.csv", **dataset}
    config = root / "kar.yaml"
    data = yaml.safe_load(config.read_text())
    data["dataset"] = {**data["dataset"], **settings}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return root


# -- tables: non-finite values -----------------------------------------------------------------
def test_nan_and_inf_ratings_are_rejected_with_row_and_reason(tmp_path: Path) -> None:
    csv = tmp_path / "inter.csv"
    csv.write_text(
        INTERACTIONS
        + "u1,i1,2020-01-01,5\n"
        + "u1,i2,2020-01-02,NaN\n"
        + "u2,i1,2020-01-03,inf\n"
        + "u2,i2,2020-01-04,-inf\n"
        + "u3,i3,2020-01-05,2\n"
    )
    ds = load_table_dataset(csv, rejects_dir=tmp_path / "rejects")
    assert ds.interactions.select("item_id", "label").rows() == [("i1", 1), ("i3", 0)]
    rejects = pl.read_csv(tmp_path / "rejects" / "custom_rejects.csv")
    assert rejects["row"].to_list() == [2, 3, 4]
    assert set(rejects["reason"]) == {"rating is not finite (NaN or inf)"}
    assert ds.meta["rejected"] == {"rating is not finite (NaN or inf)": 3}


def test_parquet_float_nan_rating_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"
    pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i3"],
            "timestamp": ["2020-01-01", "2020-01-02", "2020-01-03"],
            "rating": [4.0, float("nan"), float("inf")],
        }
    ).write_parquet(path)
    ds = load_table_dataset(path)
    assert ds.interactions["user_id"].to_list() == ["u1"]
    assert ds.rejects["row"].to_list() == [2, 3]


def test_nan_label_is_rejected_and_other_bad_labels_are_fatal(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"  # pandas writes a missing float label as NaN
    frame = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i3"],
            "timestamp": ["2020-01-01", "2020-01-02", "2020-01-03"],
            "label": [1.0, float("nan"), 0.0],
        }
    )
    frame.write_parquet(path)
    ds = load_table_dataset(path)
    assert ds.interactions.select("user_id", "label").rows() == [("u1", 1), ("u3", 0)]
    assert ds.rejects.select("row", "reason").rows() == [(2, "label is NaN")]
    frame.with_columns(pl.Series("label", [1.0, float("inf"), 2.0])).write_parquet(path)
    with pytest.raises(DataValidationError, match="0/1 label") as bad:
        load_table_dataset(path)
    assert (bad.value.row, bad.value.field) == (2, "label")
    csv = tmp_path / "inter.csv"
    csv.write_text("user_id,item_id,timestamp,label\nu1,i1,2020-01-01,1\nu2,i2,2020-01-02,2\n")
    with pytest.raises(DataValidationError, match="'2'") as bad:
        load_table_dataset(csv)
    assert (bad.value.row, bad.value.field) == (2, "label")


# -- tables through the CLI (regressions: already one line) -------------------------------------
@pytest.mark.parametrize(
    ("content", "dataset", "names"),
    [
        ("user_id,item_id,rating\nu1,i1,5\n", {}, ["mine.csv", "'timestamp'", "columns found"]),
        (
            "usr,item_id,timestamp,rating\nu1,i1,2020-01-01,5\n",
            {"mapping": {"user_id": "uid"}},
            ["mine.csv", "'uid'", "columns found"],
        ),
        (INTERACTIONS + "u1,i1,2020-01-01,5\nu1,i2,yesterday,4\n", {}, ["row 2", "yesterday"]),
        (INTERACTIONS.encode() + b"u1,caf\xe9,2020-01-01,5\n", {}, ["row 1", "UTF-8"]),
        (b"", {}, ["mine.csv"]),
    ],
    ids=["missing-column", "mapping-names-absent-column", "bad-timestamp", "not-utf8", "empty"],
)
def test_bad_table_is_one_line(tmp_path: Path, content, dataset, names) -> None:
    root = table_project(tmp_path, content, **dataset)
    assert_one_line_error(
        run_kar("generate", "-p", str(root), "--limit", "1", cwd=tmp_path), *names
    )


def test_duplicate_rows(tmp_path: Path) -> None:
    """Repeated interactions are rejected (not fatal); a repeated item id is fatal."""
    csv = tmp_path / "inter.csv"
    csv.write_text(INTERACTIONS + "u1,i1,2020-01-01,5\nu1,i1,2020-01-01,5\nu1,i2,2020-01-02,4\n")
    ds = load_table_dataset(csv)
    assert ds.interactions.height == 2 and ds.rejects["row"].to_list() == [2]
    root = table_project(tmp_path, csv.read_text(), items="data/items2.csv")
    (root / "data" / "items2.csv").write_text("item_id,title\ni1,A\ni2,B\ni1,C\n")
    run = run_kar("generate", "-p", str(root), "--limit", "1", cwd=tmp_path)
    assert_one_line_error(run, "items2.csv", "row 3", "'item_id'", "duplicate")


# -- kar.yaml ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (
            lambda t: t.replace("valid_fraction: 0.1", "valid_fraction: 1.5"),
            ["kar.yaml", "'split.valid_fraction'", "less than or equal to 1"],
        ),
        (
            lambda t: t.replace("test_fraction: 0.1", "test_fraction: 0.95"),
            ["kar.yaml", "'split'", "valid_fraction + test_fraction must be <= 1"],
        ),
        (
            lambda t: t.replace("history_fraction: 0.5", "history_fraction: -0.5"),
            ["kar.yaml", "'split.history_fraction'"],
        ),
        (
            lambda t: t.replace(
                "knowledge_store: sqlite:///artifacts/knowledge.db",
                "knowledge_store: mongodb://x/y",
            ),
            ["kar.yaml", "'knowledge_store'", "mongodb://", "sqlite:///", "postgresql+psycopg://"],
        ),
        (
            lambda t: t.replace("batch_size: 16", "batch_sise: 16"),
            ["kar.yaml", "generation.batch_sise"],
        ),
        (lambda t: t + "\nsplit: [unclosed\n", ["kar.yaml", "not valid YAML"]),
    ],
    ids=["valid-fraction", "fractions-sum", "history-fraction", "mongodb", "typo", "bad-yaml"],
)
def test_bad_kar_yaml_is_one_line(tmp_path: Path, edit, names) -> None:
    root = make_project(tmp_path / "proj")
    config = root / "kar.yaml"
    config.write_text(edit(config.read_text()))
    assert_one_line_error(run_kar("generate", "-p", str(root), cwd=tmp_path), *names)


def test_split_settings_are_checked_at_load(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", split={"valid_fraction": 0.3, "test_fraction": 0.7})
    assert ProjectFolder.load(root).settings.split.test_fraction == 0.7  # sum 1 is allowed
    make_project(tmp_path / "p2", split={"valid_fraction": float("nan")})
    with pytest.raises(ConfigError, match="split.valid_fraction"):
        ProjectFolder.load(tmp_path / "p2")


def test_experts_yaml_with_a_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("type: hea\nn_shared: 2\nn_specifc: 2\nout_dim: 32\n")
    with pytest.raises(ConfigError, match="n_specifc") as err:
        AdaptorConfig.load(bad)
    assert str(bad) in str(err.value)
    bad.write_text("type: hea\nn_shared: [2\n")
    with pytest.raises(ConfigError, match="mine.yaml"):
        AdaptorConfig.load(bad)


# -- knowledge store URLs ------------------------------------------------------------------------
def test_unsupported_store_url_in_python_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mongodb:// cannot be loaded; use sqlite:///"):
        KnowledgeStore("mongodb://x/y")


def test_bare_relative_store_path_is_the_projects_whatever_the_cwd(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", knowledge_store="artifacts/knowledge.db")
    texts = tmp_path / "texts.csv"
    texts.write_text("entity_id,kind,text\nf002,item,A giant ape on an island.\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_kar(
        "knowledge", "import", str(texts), "-p", str(root), "-s", "mine", cwd=elsewhere
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "artifacts" / "knowledge.db").is_file()
    assert not (elsewhere / "artifacts").exists()
    listed = run_kar("knowledge", "sources", "-p", "proj", cwd=tmp_path)  # a relative -p too
    assert listed.returncode == 0 and "mine" in listed.stdout, listed.stdout + listed.stderr
    url = ProjectFolder.load(root).knowledge_store_url
    assert url == f"sqlite:///{root.resolve() / 'artifacts' / 'knowledge.db'}"


def test_store_outside_the_project_needs_an_existing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "dir"
    root = make_project(tmp_path / "proj", knowledge_store=f"sqlite:///{missing / 'k.db'}")
    result = run_kar("knowledge", "sources", "-p", str(root), cwd=tmp_path)
    assert_one_line_error(result, "knowledge_store", str(missing), "does not exist")
    assert not (tmp_path / "nowhere").exists()
    missing.mkdir(parents=True)  # an existing folder outside the project is fine
    assert ProjectFolder.load(root).knowledge_store_url == f"sqlite:///{missing / 'k.db'}"
    inside = make_project(tmp_path / "p2", knowledge_store="sqlite:///new/sub/k.db")
    ProjectFolder.load(inside).knowledge_store_url  # noqa: B018 (inside: the folder is made)
    assert (inside / "new" / "sub").is_dir()
