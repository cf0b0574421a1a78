"""``kar.Project``, the facade: typed stage methods, data loaded once, clear errors (fast:
no LLM; every stage on the demo through these methods is tests/test_pipeline.py)."""

from __future__ import annotations

import inspect

import pytest

import kar
from kar import pipeline
from kar.errors import ConfigError, KarError
from kar.facade import Project

STAGES = ("generate", "encode", "train", "publish", "evaluate", "refresh", "training_set", "online")


def _return_annotation(fn: object) -> str:
    annotation = inspect.signature(fn).return_annotation  # a string: postponed annotations
    return "" if annotation is inspect.Signature.empty else str(annotation)


def test_no_public_stage_returns_any() -> None:
    methods = {f"Project.{name}": getattr(Project, name) for name in ("init", *STAGES)}
    functions = {
        f"pipeline.{name}": fn
        for name, fn in vars(pipeline).items()
        if inspect.isfunction(fn) and fn.__module__ == pipeline.__name__ and name[0] != "_"
    }
    assert {"pipeline.run_generate", "pipeline.run_train", "pipeline.ctr_features"} <= set(
        functions
    )
    untyped = {
        name: _return_annotation(fn)
        for name, fn in {**methods, **functions}.items()
        if not _return_annotation(fn) or "Any" in _return_annotation(fn)
    }
    assert untyped == {}
    assert _return_annotation(Project.generate) == "dict[str, GenerationReport]"
    assert _return_annotation(Project.train) == "TrainResult"
    assert _return_annotation(Project.publish) == "PublishReport"
    assert _return_annotation(Project.online) == "KnowledgeServer"


def test_kar_exports_the_facade() -> None:
    assert kar.Project is Project
    assert "Project" in kar.__all__
    with pytest.raises(AttributeError):
        kar.NoSuchThing  # noqa: B018


def test_init_then_open_and_the_data_is_loaded_once(tmp_path) -> None:
    created = kar.Project.init(tmp_path / "p", n_users=5)
    assert (created.root / "kar.yaml").is_file() and created.settings.scenario == "demo"
    project = kar.Project(tmp_path / "p")
    assert project.root == created.root and repr(project) == f"kar.Project('{project.root}')"
    dataset, split = project.dataset, project.split
    assert dataset.users.height == 5 and split.train.height > 0
    assert project.dataset is dataset and project.split is split  # cached, not reloaded
    assert project.scenario is project.scenario and project.store is project.store
    project.reload()
    assert project.dataset is not dataset  # read again from the files
    assert project.dataset.interactions.equals(dataset.interactions)
    with pytest.raises(KarError, match="already exists"):
        kar.Project.init(tmp_path / "p")


def test_missing_project_and_bad_override_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="kar init"):
        kar.Project(tmp_path / "nowhere")
    project = kar.Project.init(tmp_path / "p", n_users=5)
    with pytest.raises(ConfigError, match="backend"):
        project.generate(backend="tgi", progress=False)
    with pytest.raises(ConfigError, match="generation.openai.model"):
        project.generate(backend="openai", progress=False)
    assert project.settings.generation.backend == "auto"  # for that call only
    assert "backend: auto" in (project.root / "kar.yaml").read_text()


def test_stages_out_of_order_say_what_to_run(tmp_path) -> None:
    project = kar.Project.init(tmp_path / "p", n_users=5)
    with pytest.raises(KarError, match="kar generate"):
        project.encode(progress=False)
    with pytest.raises(KarError, match="kar train"):
        project.publish()
