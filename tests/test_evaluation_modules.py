"""The evaluation split by job: kar.models.evaluation re-exports the public names of the
harness, tuning, run log and report modules, and ``compare`` takes its settings either as
a :class:`CompareSettings` or as its former arguments (nothing here trains a model)."""

from __future__ import annotations

import dataclasses

import pytest

from kar.models import evaluation, harness, report, runlog, tuning
from kar.models.harness import CompareSettings, compare


def test_evaluation_re_exports_the_split_modules() -> None:
    for module in (harness, report, runlog, tuning):
        public = [n for n in dir(module) if not n.startswith("_")]
        for name in set(public) & set(evaluation.__all__):
            assert getattr(evaluation, name) is getattr(module, name)
    for name in ("compare", "summarize", "write_report", "headline_line", "TUNING_GRID",
                 "KNOWLEDGE_GRID", "RunLog", "choose_training_config", "run_fingerprints",
                 "start_and_config", "cold_slices", "markdown_table", "BASELINE"):  # fmt: skip
        assert name in evaluation.__all__ and hasattr(evaluation, name)


def test_settings_fields_follow_compares_former_arguments() -> None:
    """Positional order as ``compare``'s former signature; the later fields keyword-only."""
    s = CompareSettings(("din",), (3,), None, {"lr": 1.0}, False, True, None, None, "d", "k")
    assert (s.backbones, s.seeds, s.model_config, s.progress, s.tune) == (
        ("din",), (3,), {"lr": 1.0}, False, True
    )  # fmt: skip
    assert (s.fingerprint, s.knowledge_fingerprint) == ("d", "k")
    with pytest.raises(TypeError):
        CompareSettings(("din",), (3,), None, None, False, True, None, None, "d", "k", None)
    kw_only = {f.name for f in dataclasses.fields(CompareSettings) if f.kw_only}
    assert kw_only == {
        "model_configs", "arms", "warm_start", "cold_threshold", "shuffle_seed", "workers"
    }  # fmt: skip
    with_own = CompareSettings(model_config={"lr": 1.0, "dropout": 0.1},
                               model_configs={"din": {"lr": 2.0}})  # fmt: skip
    assert with_own.base_config("din") == {"lr": 2.0, "dropout": 0.1}
    assert with_own.base_config("deepfm") == {"lr": 1.0, "dropout": 0.1}


def test_compare_takes_settings_or_fields_not_both() -> None:
    with pytest.raises(TypeError, match="not both"):
        compare(None, ("deepfm",), settings=CompareSettings())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        compare(None, no_such_field=1)  # type: ignore[arg-type]
