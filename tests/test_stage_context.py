"""One stage context (kar.project_data.StageContext) handed to every stage: the project, its
data, scenario and store read once and shared; no stage takes data= / scenario= / store=."""

from __future__ import annotations

import inspect

import pytest

import kar
from kar import pipeline
from kar.pipeline import init_project
from kar.project_data import StageContext, Subset, stage_context

STAGES = (
    pipeline.run_generate,
    pipeline.estimate_generation,
    pipeline.run_encode,
    pipeline.run_train,
    pipeline.run_publish,
    pipeline.run_evaluate,
    pipeline.import_knowledge,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return init_project(tmp_path_factory.mktemp("ctx") / "p", n_users=30)


@pytest.mark.parametrize("stage", STAGES, ids=lambda f: f.__name__)
def test_every_stage_takes_one_context_and_no_loaded_things(stage) -> None:
    params = inspect.signature(stage).parameters
    first = next(iter(params))
    assert first == "stage" and "StageContext" in str(params[first].annotation)
    assert not {"data", "scenario", "store", "subset"} & set(params)


def test_things_are_read_once_and_shared_with_a_settings_override(folder) -> None:
    ctx = StageContext(folder)
    assert ctx.loaded == {}
    data, scenario, store = ctx.data, ctx.scenario, ctx.store
    assert ctx.data is data and ctx.scenario is scenario and ctx.store is store
    other = ctx.on(type(folder)(folder.root, folder.settings.model_copy(deep=True)))
    assert other.project is not folder and other.data is data and other.store is store
    refresh = ctx.on(subset=Subset(user_ids=("u1",)))
    assert refresh.subset.user_ids == ("u1",) and refresh.data is data
    ctx.forget("data")
    assert ctx.data is not data and ctx.scenario is scenario
    assert stage_context(ctx) is ctx and stage_context(folder).loaded == {}


def test_the_project_object_holds_one_context_for_its_stages(folder) -> None:
    project = kar.Project(folder.root)
    first = project.estimate(limit=2)
    assert {"data", "scenario", "store"} <= set(project.context.loaded)
    data = project.context.data
    again = project.estimate(limit=2, backend="transformers")  # a per-call override
    assert project.context.data is data  # nothing read again
    assert [e.prompts for e in first] == [e.prompts for e in again] == [2, 2]
    project.reload()
    assert "data" not in project.context.loaded and project.dataset is not data
