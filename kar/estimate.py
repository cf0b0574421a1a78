"""How long ``kar generate`` would take, before the LLM loads: the generation rates measured
on this machine (``artifacts/generation_rates.json``), or a per-backend default."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from kar.generation import GenerationReport
    from kar.project import GenerationSettings, ProjectFolder

# tokens/s per kind when this machine has not measured the configured model yet: the
# quickstart's on a 2-core CPU (transformers, SmolLM2, batch 16; DESIGN.md), else a guess
DEFAULT_RATES = {
    "transformers": {"user_preference": 36.0, "item_fact": 73.0},
    "vllm": {"user_preference": 150.0, "item_fact": 250.0},
}

DEFAULT_RATE = 300.0  # openai / ray: a server or a cluster


class KindEstimate(NamedTuple):
    """What ``kar generate`` would do for one knowledge kind, before the LLM loads."""

    kind: str
    prompts: int  # selected
    pending: int  # not answered yet (nor imported)
    tokens: int  # expected new tokens
    tokens_per_s: float
    measured: bool  # the rate was measured on this machine for this model

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_s if self.tokens_per_s else 0.0

    def line(self) -> str:
        source = "measured here" if self.measured else "a default, not measured here yet"
        minutes = self.seconds / 60
        return (
            f"{self.kind}: {self.pending:,} of {self.prompts:,} prompts to answer, "
            f"~{self.tokens:,} tokens at {self.tokens_per_s:.0f} tok/s ({source}): "
            f"~{minutes:.1f} min"
        )


def measured_rates(project: ProjectFolder) -> dict[str, dict[str, object]]:
    """Per kind: the rate a run on this machine measured (``generation_rates.json``)."""
    path = project.rates_path
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def record_rate(project: ProjectFolder, kind: str, model: str, report: GenerationReport) -> None:
    """Keep a run's measured tokens/s and tokens per answer (``kar generate --estimate``)."""
    answers = report.answered_ok + report.flagged
    if not answers or report.seconds <= 0:
        return
    rates = measured_rates(project)
    rates[kind] = {
        "model": model,
        "backend": engine_name(project.settings.generation, report.total - report.skipped_done),
        "tokens_per_s": round(report.completion_tokens / report.seconds, 2),
        "tokens_per_answer": round(report.completion_tokens / answers, 1),
    }
    project.rates_path.parent.mkdir(parents=True, exist_ok=True)
    project.rates_path.write_text(json.dumps(rates, indent=2))


def engine_name(gen: GenerationSettings, pending: int | None) -> str:
    """The backend that runs ``pending`` prompts (what ``backend: auto`` picks)."""
    from kar.generation.factory import choose_backend

    return choose_backend(gen, pending).name


def kind_estimate(
    kind: str,
    prompts: int,
    pending: int,
    max_new_tokens: int,
    measured: dict[str, object],
    model: str,
    engine: str,
) -> KindEstimate:
    """The estimate of one kind: at ``measured`` (this kind's recorded rate) when it was
    measured for ``model`` on ``engine``, else at the engine's default rate with answers
    of 80% of ``max_new_tokens``."""
    known = measured.get("model") == model and measured.get("backend", engine) == engine
    if known:
        rate = float(measured["tokens_per_s"])  # type: ignore[arg-type]
        per_answer = float(measured["tokens_per_answer"])  # type: ignore[arg-type]
    else:
        rate = DEFAULT_RATES.get(engine, {}).get(kind, DEFAULT_RATE)
        per_answer = 0.8 * max_new_tokens
    return KindEstimate(kind, prompts, pending, round(pending * per_answer), rate, known)
