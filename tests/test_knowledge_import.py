"""``kar knowledge import``: your own texts in the real knowledge store (SQLite), through the
real encoder; bad rows rejected with a reason and row; re-imports idempotent."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from kar.data import load_demo, make_time_split, write_demo_dataset
from kar.errors import ConfigError, DataValidationError
from kar.generation import KnowledgeStore
from kar.generation.imports import content_hash, import_texts
from kar.prompts import Scenario, build_item_prompts
from kar.records import KIND_ITEM, KIND_USER, GenerationOutput, SamplingParams


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    write_demo_dataset(folder / "data", n_users=6, n_items=None)  # ids f001..f581
    ds = load_demo(folder / "data")
    return folder, ds, make_time_split(ds), Scenario.load("demo")


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pl.DataFrame(rows, schema=["entity_id", "kind", "text"], orient="row").write_csv(path)
    return path


def _store(tmp_path: Path) -> KnowledgeStore:
    return KnowledgeStore(tmp_path / "knowledge.db")


def test_import_round_trips_through_store_and_encoder(world, tmp_path: Path) -> None:
    from kar.encoding import TextEncoder, encode_knowledge, knowledge_text

    _, ds, split, scenario = world
    users = split.as_of["user_id"].to_list()[:2]
    rows = [("f001", "item", "A dark, slow classic."), ("f002", "item_fact", "A light comedy.")]
    rows += [(u, "user", f"Likes dark films {i}.") for i, u in enumerate(users)]
    store = _store(tmp_path)
    # an LLM answer for f001, stored first: the imported text must win over it
    prompt = build_item_prompts(ds, scenario, ["f001"])[0]
    store.write([KnowledgeStore.make_row(
        prompt, GenerationOutput("LLM guess.", 10, 3, "stop"),
        model="smollm2", sampling_key="k", params=SamplingParams(),
    )])  # fmt: skip
    report = import_texts(
        _csv(tmp_path / "mine.csv", rows), store, ds, scenario,
        rejects_dir=tmp_path / "rejects", as_of=split.as_of,
    )  # fmt: skip
    assert (report.imported, report.n_rejected, report.source) == (4, 0, "mine")
    assert report.by_kind == {"item": 2, "user": 2}
    answers = store.answers(scenario="demo")
    assert answers.height == 4
    item = answers.filter(pl.col("entity_id") == "f001").row(0, named=True)
    assert item["answer"] == "A dark, slow classic." and item["model"] == "import:mine"
    assert item["prompt_hash"] == content_hash("A dark, slow classic.")
    assert item["kind"] == KIND_ITEM and item["context_text"] == prompt.context_text
    user = answers.filter(pl.col("entity_id") == users[0]).row(0, named=True)
    assert user["kind"] == KIND_USER and user["context_text"].startswith("- ")  # its history
    as_of = split.as_of.filter(pl.col("user_id") == users[0])["as_of"][0]
    assert user["as_of"] == as_of
    lineage = json.loads(store.engine.connect().exec_driver_sql(
        "select prompt_text from knowledge where entity_id = 'f002'").scalar_one())  # fmt: skip
    assert lineage == {"source": "mine", "file": str(tmp_path / "mine.csv"), "row": 2,
                       "content_hash": content_hash("A light comedy.")}  # fmt: skip

    encoder = TextEncoder()
    vectors = encode_knowledge(answers, encoder)
    assert vectors.users.height == 2 and vectors.items.height == 2
    expected = encoder.encode([knowledge_text("item", item["answer"], item["context_text"])])
    got = vectors.items.filter(pl.col("entity_id") == "f001")["vector"].to_list()
    np.testing.assert_allclose(np.asarray(got[0]), expected[0], rtol=1e-5, atol=1e-6)


def test_reimport_is_idempotent_and_changed_text_replaces(world, tmp_path: Path) -> None:
    _, ds, _, scenario = world
    store = _store(tmp_path)
    rows = [("f001", "item", "Old text."), ("f003", "item", "Kept text.")]
    first = import_texts(_csv(tmp_path / "t.csv", rows), store, ds, scenario)
    again = import_texts(_csv(tmp_path / "t.csv", rows), store, ds, scenario)
    assert (first.imported, again.imported, again.unchanged, again.replaced) == (2, 0, 2, 0)
    assert store.count() == 2
    changed = import_texts(_csv(tmp_path / "t.csv", [("f001", "item", "New text.")]),
                           store, ds, scenario)  # fmt: skip
    assert (changed.replaced, changed.imported, store.count()) == (1, 0, 2)
    answers = store.answers(scenario="demo").sort("entity_id")
    assert answers["answer"].to_list() == ["New text.", "Kept text."]  # f003 not lost
    # back to the first text: replaced again, not silently ignored
    import_texts(_csv(tmp_path / "t.csv", [("f001", "item", "Old text.")]), store, ds, scenario)
    assert store.answers(scenario="demo").sort("entity_id")["answer"][0] == "Old text."
    # the same text, but the item's description line (its stored context) changed: replaced
    renamed = dataclasses.replace(ds, items=ds.items.with_columns(
        pl.when(pl.col("item_id") == "f003").then(pl.lit("Renamed")).otherwise("title")
        .alias("title")))  # fmt: skip
    again = import_texts(_csv(tmp_path / "t.csv", [("f003", "item", "Kept text.")]),
                         store, renamed, scenario)  # fmt: skip
    assert (again.replaced, again.unchanged, store.count()) == (1, 0, 2)
    f003 = store.answers(scenario="demo").filter(pl.col("entity_id") == "f003")
    assert f003["context_text"][0].startswith("Renamed")
    # another source for the same item: both kept, the later import is the answer
    import_texts(_csv(tmp_path / "other.csv", [("f001", "item", "Other.")]), store, ds, scenario)
    assert store.count() == 3
    assert store.answers(scenario="demo").sort("entity_id")["answer"][0] == "Other."


def test_bad_rows_are_rejected_with_reason_and_row(world, tmp_path: Path) -> None:
    _, ds, _, scenario = world
    rows = [
        ("f001", "item", "Good."),  # 1
        ("f999", "item", "No such item."),  # 2
        ("nobody", "user", "No such user."),  # 3
        ("f002", "item", "   "),  # 4
        ("f003", "genre", "Unknown kind."),  # 5
        ("f001", "item", "Listed twice."),  # 6
        ("", "item", "No id."),  # 7
        ("f004", "ITEM", "Good too."),  # 8
    ]
    store = _store(tmp_path)
    report = import_texts(
        _csv(tmp_path / "bad.csv", rows), store, ds, scenario, rejects_dir=tmp_path / "rej"
    )
    assert report.imported == 2 and report.rows_read == 8 and report.n_rejected == 6
    rejects = pl.read_csv(report.rejects_file).sort("row")
    assert Path(report.rejects_file).name == "knowledge_import_bad_rejects.csv"
    assert rejects.select("row", "reason").rows() == [
        (2, "item_id not in the project's items"),
        (3, "user_id not in the project's users"),
        (4, "empty text"),
        (5, "unknown kind (expected user or item)"),
        (6, "duplicate entity (same kind and entity_id on an earlier row)"),
        (7, "missing entity_id"),
    ]
    assert rejects["item_id"][0] == "f999" and rejects["user_id"][1] == "nobody"
    assert sorted(store.answers()["entity_id"]) == ["f001", "f004"]


def test_unreadable_file_is_an_error_and_loses_nothing(world, tmp_path: Path) -> None:
    _, ds, _, scenario = world
    store = _store(tmp_path)
    import_texts(_csv(tmp_path / "good.csv", [("f001", "item", "Good.")]), store, ds, scenario)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("entity_id,kind,text\nf002,item,ok\nf003,item,Am\xe9lie\n".encode("latin-1"))
    with pytest.raises(DataValidationError) as err:
        import_texts(latin, store, ds, scenario)
    assert (err.value.file, err.value.row, err.value.field) == (str(latin), 2, "text")
    nocol = _csv(tmp_path / "nocol.csv", [("f002", "item", "x")])
    pl.read_csv(nocol).rename({"text": "answer"}).write_csv(nocol)
    with pytest.raises(DataValidationError, match="required column missing") as err:
        import_texts(nocol, store, ds, scenario)
    assert err.value.field == "text"
    with pytest.raises(ConfigError, match="source name"):
        import_texts(tmp_path / "good.csv", store, ds, scenario, source="bad name!")
    assert store.answers()["answer"].to_list() == ["Good."]  # the earlier import intact


def test_parquet_binary_text_that_is_not_utf8_is_rejected(world, tmp_path: Path) -> None:
    _, ds, _, scenario = world
    path = tmp_path / "bin.parquet"
    pl.DataFrame(
        {"entity_id": ["f001", "f002"], "kind": ["item", "item"], "text": [b"Fine.", b"\xff\xfe"]}
    ).write_parquet(path)
    store = _store(tmp_path)
    report = import_texts(path, store, ds, scenario, rejects_dir=tmp_path)
    assert report.imported == 1 and report.rejected == {"text not valid UTF-8": 1}


def test_generate_does_not_ask_about_imported_entities_and_cli(world) -> None:
    from kar.cli import app
    from kar.pipeline import answer_prompts, build_prompts
    from kar.project import ProjectFolder, ProjectSettings

    root, ds, split, scenario = world
    folder = ProjectFolder(root, ProjectSettings())
    folder.save()
    texts = _csv(root / "texts.csv", [("f001", "item", "Imported."), ("zz", "item", "bad")])
    result = CliRunner().invoke(
        app, ["knowledge", "import", str(texts), "-p", str(root), "--source", "mine"]
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "2 rows read, 1 new" in output and "(1 item); 1 rejected" in output
    assert (root / "artifacts/rejects/knowledge_import_mine_rejects.csv").exists()
    store = KnowledgeStore(folder.knowledge_store_url)
    assert store.imported_keys() == {("demo", "item", "f001", KIND_ITEM)}
    prompts = [p for p in build_prompts(folder, ds, split, scenario) if p.entity_id == "f001"]
    assert len(prompts) == 1
    assert answer_prompts(folder, prompts, store=store, progress=False) == {}  # no LLM loaded
    bad = CliRunner().invoke(app, ["knowledge", "import", str(root / "none.csv"), "-p", str(root)])
    assert bad.exit_code == 1 and "file not found" in bad.output
    listed = CliRunner().invoke(app, ["knowledge", "sources", "-p", str(root)])
    assert listed.exit_code == 0 and "mine" in listed.output and "item_fact" in listed.output
    gone = CliRunner().invoke(app, ["knowledge", "forget", "mine", "-p", str(root)])
    assert gone.exit_code == 0 and "forgot 1 texts" in gone.output
    assert store.imported_keys() == set() and store.count() == 0


def test_refresh_replans_entities_whose_imported_text_changed(tmp_path: Path) -> None:
    from kar.errors import KarError
    from kar.project import ProjectFolder, ProjectSettings
    from kar.refresh import refresh
    from kar.refresh.state import RefreshState

    write_demo_dataset(tmp_path / "data", n_users=4, n_items=None)
    folder = ProjectFolder(tmp_path, ProjectSettings())
    folder.save()
    texts = tmp_path / "t.csv"
    boot = refresh(folder)  # first refresh: records the watermark only
    assert boot.bootstrap
    from kar.pipeline import import_knowledge

    import_knowledge(folder, _csv(texts, [("f007", "item", "Grim.")]), source="mine")
    with pytest.raises(KarError, match="no trained adaptor"):  # stops after generate + encode
        refresh(folder)
    state = RefreshState(KnowledgeStore(folder.knowledge_store_url))
    pending = state.pending("demo:data")
    assert pending is not None and pending.items == ["f007"] and pending.users == []


def test_init_demo_oracle_imports_the_trait_texts(tmp_path: Path) -> None:
    from kar.cli import app
    from kar.project import ProjectFolder

    result = CliRunner().invoke(app, ["init", str(tmp_path / "p"), "--demo", "oracle"])
    assert result.exit_code == 0, result.output
    folder = ProjectFolder.load(tmp_path / "p")
    assert folder.settings.name == "kar-demo-oracle"
    answers = KnowledgeStore(folder.knowledge_store_url).answers(scenario="demo")
    assert answers.height == 300 and set(answers["model"]) == {"import:demo-oracle"}
    assert (answers["context_text"] == "").all()  # the sentence alone reaches the encoder
    assert (
        set(answers["entity_type"]) == {"item"} and answers["answer"].str.contains("Tone: ").all()
    )
    bad = CliRunner().invoke(app, ["init", str(tmp_path / "q"), "--demo", "magic"])
    assert bad.exit_code == 1 and "demo variant 'magic'" in bad.output
    assert not (tmp_path / "q").exists()  # refused before writing anything
