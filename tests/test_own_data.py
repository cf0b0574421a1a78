"""A feature engineer's own data, first time right (issue 33): `kar init --interactions`,
loader options from kar.yaml, epoch units, title normalisation, item-only knowledge, exports
of every entity, `generate --sample / --estimate`, coverage lines. Real parts: the bundled
LLM and encoder, a real Feast repo, real SQLite."""

from __future__ import annotations

import csv
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from kar.cli import app
from kar.data import load_table_dataset
from kar.data.inspect import feast_project_name, propose_mapping
from kar.errors import DataValidationError
from kar.facade import Project
from kar.project import ProjectFolder

runner = CliRunner()
T0_MS = 1_650_000_000_000  # 2022-04-15 in epoch milliseconds


def write_shop(folder: Path, n_users: int = 30, n_items: int = 24, seed: int = 0) -> dict:
    """Tables kar never saw: odd column names, ms epochs, a free-text column, MovieLens-
    style titles ("Lamp 5, The (1999)"). Returns the file paths."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n_items):
        name = f"Lamp {i}, The (1999)" if i % 6 == 0 else f"Lamp {i}"
        blurb = (f"A {rng.choice(['brass', 'paper', 'glass'])} lamp for "
                 f"{rng.choice(['reading', 'kitchens', 'gardens'])}, {rng.choice(['warm', 'cold'])}"
                 " light and a long cord.")  # fmt: skip
        items.append((f"SKU-{i:03d}", name, rng.choice(["desk", "floor"]), blurb))
    with open(folder / "catalogue.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Prod Code", "Product Name", "Category", "Blurb"])
        w.writerows(items)
    with open(folder / "events.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Kunde", "Prod Code", "EventTimeMs", "Stars (1-5)"])
        for u in range(n_users):
            for k in rng.sample(range(n_items), 10):
                w.writerow([f"K{u:02d}", items[k][0], T0_MS + rng.randint(0, 10**10),
                            rng.randint(1, 5)])  # fmt: skip
    with open(folder / "item_texts.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["entity_id", "kind", "text"])
        w.writerows((code, "item", blurb) for code, _, _, blurb in items)
    return {k: folder / f"{k}.csv" for k in ("events", "catalogue", "item_texts")}


@pytest.fixture
def shop(tmp_path: Path) -> dict:
    return write_shop(tmp_path / "shop")


# -- A: the mapping proposal ----------------------------------------------------------------


def test_proposal_places_odd_columns(shop: dict) -> None:
    proposal = propose_mapping(shop["events"], shop["catalogue"], given={"user_id": "Kunde"})
    assert proposal.mapping["user_id"] == "Kunde"
    assert proposal.mapping["item_id"] == "Prod Code"
    assert proposal.mapping["timestamp"] == "EventTimeMs"
    assert proposal.mapping["rating"] == "Stars (1-5)"
    assert proposal.mapping["title"] == "Product Name"
    assert proposal.timestamp_unit == "ms"
    assert proposal.label_threshold == 4.0 and proposal.rating_max == 5
    assert proposal.item_text_columns == ["Blurb"]
    assert any("ms" in note for note in proposal.notes)


def test_proposal_names_what_it_cannot_place(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="--map user_id=COLUMN") as err:
        propose_mapping(path)
    assert err.value.file == str(path) and err.value.field == "user_id"
    assert "\n" not in str(err.value)


def test_items_and_users_files_need_the_interactions_id_column(shop: dict, tmp_path: Path) -> None:
    for entity, header in (("item", "Code,Name\nSKU-000,Lamp\n"), ("user", "Who,Age\nK00,30\n")):
        other = tmp_path / f"{entity}s.csv"
        other.write_text(header, encoding="utf-8")
        files = {"items": other} if entity == "item" else {"users": other}
        with pytest.raises(DataValidationError, match=f"needs the {entity} id column") as err:
            propose_mapping(shop["events"], given={"user_id": "Kunde"}, **files)
        assert err.value.file == str(other) and "\n" not in str(err.value)


def test_feast_project_names_are_valid() -> None:
    assert feast_project_name("My Shop-2024") == "my_shop_2024"
    assert feast_project_name("2024 shop") == "kar_2024_shop"
    assert feast_project_name("__") == "kar_project"


# -- B: timestamps, titles, loader options ----------------------------------------------------


def _table(tmp_path: Path, name: str, stamps: list) -> Path:
    path = tmp_path / name
    frame = pl.DataFrame(
        {"uid": ["u1", "u1", "u2"], "iid": ["i1", "i2", "i1"], "when": stamps, "r": [5, 3, 4]}
    )
    frame.write_csv(path)
    return path


@pytest.mark.parametrize(
    ("unit", "factor"), [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)]
)
def test_epoch_unit_detected_by_magnitude(tmp_path: Path, unit: str, factor: int) -> None:
    seconds = [1_650_000_000, 1_650_000_100, 1_650_000_200]
    path = _table(tmp_path, f"{unit}.csv", [s * factor for s in seconds])
    mapping = {"user_id": "uid", "item_id": "iid", "timestamp": "when", "rating": "r"}
    ds = load_table_dataset(path, mapping=mapping)
    first = ds.interactions.sort("timestamp")["timestamp"][0]
    assert first == datetime.fromtimestamp(seconds[0], UTC)


def test_iso_timestamps_and_a_wrong_unit_is_one_line(tmp_path: Path) -> None:
    mapping = {"user_id": "uid", "item_id": "iid", "timestamp": "when", "rating": "r"}
    iso = _table(tmp_path, "iso.csv", ["2022-04-15T05:20:00", "2022-04-16", "2022-04-17"])
    assert load_table_dataset(iso, mapping=mapping).interactions.height == 3
    ms = _table(tmp_path, "ms.csv", [T0_MS, T0_MS + 5, T0_MS + 9])
    with pytest.raises(DataValidationError) as err:  # ms epochs read as seconds
        load_table_dataset(ms, mapping=mapping, timestamp_unit="s")
    message = str(err.value)
    assert "\n" not in message and err.value.file == str(ms) and err.value.field == "when"
    assert "timestamp_unit: ms" in message and err.value.row == 1


def test_table_titles_normalised_as_movielens(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    pl.DataFrame(
        {
            "item_id": ["i1", "i2", "i3"],
            "title": ["Godfather, The (1972)", "Alien", "Heat, A"],
            "year": [None, 1979, 1995],
        }  # fmt: skip
    ).write_csv(items)
    inter = _table(tmp_path, "i.csv", [1_650_000_000, 1_650_000_001, 1_650_000_002])
    ds = load_table_dataset(
        inter,
        items,
        mapping={
            "user_id": "uid",
            "item_id": "iid",
            "timestamp": "when",
            "rating": "r",
        },  # fmt: skip
    )
    rows = {r["item_id"]: (r["title"], r["year"]) for r in ds.items.iter_rows(named=True)}
    assert rows == {"i1": ("The Godfather", 1972), "i2": ("Alien", 1979), "i3": ("A Heat", 1995)}


def test_loader_options_reach_the_loader_from_kar_yaml(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    inter = tmp_path / "events.csv"
    pl.DataFrame(
        {
            "who": ["a", "a", "b", "b"],
            "what": ["x", "y", "x", "y"],
            "at": ["15/04/2022 10:00", "16/04/2022 10:00", "15/04/2022 11:00", "17/04/2022 09:30"],
            "liked": ["1", "0", "0", "1"],
        }  # fmt: skip
    ).write_csv(inter)
    items = tmp_path / "items.csv"
    pl.DataFrame(
        {
            "what": ["x", "y"],
            "title": ["X", "Y"],
            "tags": ["a;b", "c"],
            "colour": ["red", "tan"],
            "noise": ["1", "2"],
        }  # fmt: skip
    ).write_csv(items)
    root.mkdir()
    (root / "kar.yaml").write_text(
        yaml.safe_dump(
            {
                "dataset": {
                    "kind": "table",
                    "path": str(inter),
                    "items": str(items),
                    "mapping": {
                        "user_id": "who",
                        "item_id": "what",
                        "timestamp": "at",
                        "genres": "tags",
                    },
                    "timestamp_format": "%d/%m/%Y %H:%M",
                    "label_column": "liked",
                    "genre_separator": ";",
                    "item_attributes": ["colour"],
                }
            }
        ),  # fmt: skip
        encoding="utf-8",
    )
    project = Project(root)
    ds = project.dataset
    assert ds.meta["label_rule"] == "label column"
    assert ds.interactions.sort("timestamp")["timestamp"][0] == datetime(
        2022, 4, 15, 10, tzinfo=UTC
    )
    assert ds.items.filter(pl.col("item_id") == "x")["genres"][0].to_list() == ["a", "b"]
    assert "colour" in ds.items.columns and "noise" not in ds.items.columns
    with pytest.raises(Exception, match="timestamp_unit"):
        ProjectFolder.load(root).settings.model_validate({"dataset": {"timestamp_unit": "minutes"}})


# -- D / E: one kind of knowledge only; exports of every entity ---------------------------------


def test_item_knowledge_only_through_every_stage(tmp_path: Path) -> None:
    from kar.data.texts import item_fact_texts, write_texts
    from kar.exports import export_project

    project = Project.init(tmp_path / "demo", n_users=12)
    settings = project.settings
    settings.training.tune = False
    settings.training.eval_backbones = ["deepfm"]
    settings.training.backbone_configs = {"default": {"batch_size": 128, "max_epochs": 2}}
    project.folder.save()
    project = Project(tmp_path / "demo")
    texts = write_texts(item_fact_texts(project.dataset.items, noun="film"), tmp_path / "t.csv")
    assert project.import_knowledge(texts).imported == project.dataset.items.height

    vectors = project.encode(progress=False)
    assert vectors.users.height == 0 and vectors.items.height == project.dataset.items.height
    coverage = project.coverage("encoded")
    assert coverage.users == 0 and coverage.test_item == 1.0
    assert any("no user knowledge" in w for w in coverage.warnings())

    result = project.train(progress=False)
    assert 0.0 < result.test_auc < 1.0
    report = project.publish()
    assert report.users == 0 and report.items == project.dataset.items.height
    user_id = project.split.test["user_id"][0]
    item_id = project.dataset.items["item_id"][0]
    batch = project.online().get(user_id, [item_id])
    assert batch.user_missing and not batch.user.any()
    assert not batch.items_missing[0] and batch.items[0].any()

    evaluation = project.evaluate(seeds=[0], progress=False)
    arms = set(evaluation.summary["arm"].to_list())
    assert {"none", "knowledge", "shuffled"} <= arms

    manifest = export_project(project.folder, "fuxictr")
    users = pl.read_parquet(project.folder.artifacts / "exports/fuxictr/user_knowledge.parquet")
    assert users.height == project.dataset.users.height  # every user, none with knowledge
    assert users["user_knowledge_missing"].to_list() == [1] * users.height
    assert manifest["kinds"]["user"]["missing"] == users.height
    manifest = export_project(project.folder, "deepctr")
    missing = np.load(project.folder.artifacts / "exports/deepctr/item_knowledge_missing.npy")
    assert missing[0] == 1 and not missing[1:].any()  # row 0: unknown ids


def test_export_fills_entities_without_knowledge(tmp_path: Path) -> None:
    from kar.exports import export_knowledge

    users = pl.DataFrame({"entity_id": ["u1"], "vector": [[1.0, 2.0]]})
    items = pl.DataFrame({"entity_id": ["i1", "i2"], "vector": [[1.0, 0.5], [0.1, 0.2]]})
    export_knowledge(users, items, "recbole", tmp_path, user_ids=["u0", "u1", "u2"],
                     item_ids=["i1", "i2"], dataset="shop")  # fmt: skip
    lines = (tmp_path / "shop.user").read_text().splitlines()
    assert lines[0].endswith("user_knowledge_missing:float")
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert rows["u0"][1:] == ["0.0 0.0", "1"] and rows["u1"][1:] == ["1.0 2.0", "0"]


# -- the whole flow, from `kar init --interactions` to `kar features online` --------------------


def _ok(args: list[str], env: dict | None = None) -> str:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def test_whole_flow_on_tables_kar_never_saw(shop: dict, tmp_path: Path) -> None:
    root = tmp_path / "My Shop"
    files = ["--interactions", str(shop["events"]), "--items", str(shop["catalogue"])]
    out = _ok(["init", str(root), *files, "--item-noun", "lamp", "--map", "user_id=Kunde"])
    assert "epoch numbers in ms" in out and "300 kept of 300 read" in out
    assert "30 users, 24 items" in out and "rejected rows: none" in out
    config = yaml.safe_load((root / "kar.yaml").read_text())
    assert config["name"] == "My Shop" and config["features"]["project"] == "my_shop"
    assert config["dataset"]["timestamp_unit"] == "ms" and config["scenario"] == "my-shop"
    assert sorted(p.name for p in (root / "prompts").iterdir()) == ["my-shop.yaml"]
    assert not (root / "data").exists()  # no demo files
    scenario = yaml.safe_load((root / "prompts/my-shop.yaml").read_text())
    assert scenario["item_noun"] == "lamp" and scenario["item_text_columns"] == ["Blurb"]
    assert Project(root).dataset.items.filter(pl.col("item_id") == "SKU-000")["title"][0] == (
        "The Lamp 0"
    )

    p = ["-p", str(root)]
    out = _ok(["generate", "--estimate", *p])
    assert "user_preference: 30 of 30 prompts to answer" in out and "item_fact: 24 of 24" in out
    _ok(["knowledge", "import", str(shop["item_texts"]), *p])
    out = _ok(["generate", "--sample", "2", *p], env={"KAR_PROGRESS_EVERY_S": "0"})
    assert "generating 2 user_preference prompts" in out  # plain progress: not a terminal
    assert "coverage: users 2/30 (7%), items 24/24 (100%)" in out
    assert "only" in out and "of test rows have user knowledge" in out
    rates = json.loads((root / "artifacts/generation_rates.json").read_text())
    assert rates["user_preference"]["tokens_per_s"] > 0
    assert "measured here" in _ok(["generate", "--estimate", "--sample", "2", *p])
    out = _ok(["encode", *p])
    assert "encoded 2 users and 24 items" in out and "coverage: users 2/30" in out
    _ok(["train", *p])
    out = _ok(["publish", *p])
    assert "coverage: users 2/30" in out
    config = yaml.safe_load((root / "kar.yaml").read_text())
    assert config["dataset"]["mapping"]["user_id"] == "Kunde"  # nothing edited by hand
    out = _ok(["features", "online", "K00", "SKU-001", "SKU-002", *p])
    assert "item SKU-001: missing=False" in out
