"""Run prompts through a backend into the knowledge store: resumable, batched, checked."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kar.errors import GenerationError, KarError
from kar.generation.backend import GenerationBackend
from kar.generation.quality import (
    EMPTY,
    REFUSAL,
    REPETITION,
    TRUNCATED,
    check_answer,
    trim_to_sentence,
)
from kar.generation.store import KnowledgeStore, call_key
from kar.records import GenerationOutput, PromptRecord, SamplingParams

log = logging.getLogger(__name__)

_MAX_RETRY_TOKENS = 4096
TruncatedPolicy = Literal["trim", "retry", "accept"]


@dataclass
class GenerationReport:
    """What one run did. ``llm_calls`` counts prompts sent to the LLM, retries included."""

    total: int
    skipped_done: int = 0
    llm_calls: int = 0
    answered_ok: int = 0
    flagged: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.total} prompts: {self.skipped_done} already answered, "
            f"{self.llm_calls} LLM calls, {self.answered_ok} ok, {self.flagged} flagged; "
            f"{self.completion_tokens} tokens in {self.seconds:.1f} s "
            f"({self.tokens_per_s:.1f} tok/s)"
        )


def retry_params(params: SamplingParams, reason: str, attempt: int) -> SamplingParams:
    """Sampling settings for retry number ``attempt`` (1-based) of an answer that failed.

    - truncated: double ``max_new_tokens`` (capped at 4096);
    - repetition: repetition penalty + 0.2 per attempt (at least 1.3);
    - empty / refusal: sample (temperature 0.7, top_p 0.95 if greedy) with seed + attempt.
    """
    if reason == TRUNCATED:
        tokens = min(params.max_new_tokens * 2**attempt, _MAX_RETRY_TOKENS)
        return dataclasses.replace(params, max_new_tokens=tokens)
    if reason == REPETITION:
        penalty = max(params.repetition_penalty + 0.2 * attempt, 1.3)
        return dataclasses.replace(params, repetition_penalty=round(penalty, 3))
    if reason in (EMPTY, REFUSAL):
        temperature = params.temperature if not params.greedy else 0.7
        top_p = params.top_p if not params.greedy else 0.95
        return dataclasses.replace(
            params, temperature=temperature, top_p=top_p, seed=params.seed + attempt
        )
    return dataclasses.replace(params, seed=params.seed + attempt)


def _prompt_length(prompt: PromptRecord) -> int:
    return sum(len(m.get("content", "")) for m in prompt.messages)


def _call_backend(
    backend: GenerationBackend, prompts: Sequence[PromptRecord], params: SamplingParams
) -> list[GenerationOutput]:
    try:
        outputs = backend.generate([list(p.messages) for p in prompts], params)
    except KarError:
        raise
    except Exception as exc:  # a backend bug or a server error: name the model and batch
        first = prompts[0]
        raise GenerationError(
            f"backend {backend.model_name!r} failed on a batch of {len(prompts)} prompts "
            f"(first: {first.entity_type} {first.entity_id!r}, {first.kind}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if len(outputs) != len(prompts):
        raise GenerationError(
            f"backend {backend.model_name!r} returned {len(outputs)} answers "
            f"for {len(prompts)} prompts"
        )
    return outputs


def _answer_batch(
    batch: Sequence[PromptRecord],
    backend: GenerationBackend,
    params: SamplingParams,
    max_retries: int,
    truncated: TruncatedPolicy,
    report: GenerationReport,
) -> list[dict[str, Any]]:
    """Answer one batch (with retries of bad answers) and return the store rows."""
    outputs = _call_backend(backend, batch, params)
    state = {i: (outputs[i], params, 1) for i in range(len(batch))}  # output, params, attempts
    report.llm_calls += len(batch)

    def reason_of(output: GenerationOutput) -> str | None:
        return settle_answer(output, truncated)[1]

    for attempt in range(1, max_retries + 1):
        groups: dict[SamplingParams, list[int]] = {}
        for i, (output, _, _) in state.items():
            reason = reason_of(output)
            if reason is not None:
                groups.setdefault(retry_params(params, reason, attempt), []).append(i)
        if not groups:
            break
        for retry, indexes in groups.items():
            retried = _call_backend(backend, [batch[i] for i in indexes], retry)
            report.llm_calls += len(indexes)
            for i, output in zip(indexes, retried, strict=True):
                state[i] = (output, retry, attempt + 1)

    results = [state[i] for i in range(len(batch))]
    return store_rows(batch, results, backend.model_name, params, truncated, report)


def settle_answer(
    output: GenerationOutput, truncated: TruncatedPolicy
) -> tuple[GenerationOutput, str | None]:
    """The answer to keep and why it is bad (None: usable), per the truncation policy
    (see :func:`generate_knowledge`)."""
    reason = check_answer(output)
    if reason != TRUNCATED or truncated == "retry":
        return output, reason
    if truncated == "accept":
        return output, None
    trimmed = trim_to_sentence(output.text)
    if trimmed is None:
        return output, reason
    return dataclasses.replace(output, text=trimmed, finish_reason="trimmed"), None


def store_rows(
    prompts: Sequence[PromptRecord],
    results: Sequence[tuple[GenerationOutput, SamplingParams, int]],
    model: str,
    params: SamplingParams,
    truncated: TruncatedPolicy,
    report: GenerationReport,
) -> list[dict[str, Any]]:
    """The store rows of answered prompts, counted into ``report``.

    ``results[i]``: prompt i's last answer, the sampling it used and the calls it took;
    ``params``: the run's sampling (its key is the store key). A bad answer is ``flagged``.
    """
    sampling_key = params.key()
    rows = []
    for prompt, (output, used, attempts) in zip(prompts, results, strict=True):
        output, reason = settle_answer(output, truncated)
        report.prompt_tokens += output.prompt_tokens
        report.completion_tokens += output.completion_tokens
        if reason is None:
            report.answered_ok += 1
        else:
            report.flagged += 1
        rows.append(
            KnowledgeStore.make_row(
                prompt,
                output,
                model=model,
                sampling_key=sampling_key,
                params=used,
                status="ok" if reason is None else "flagged",
                flag_reason=reason,
                attempts=attempts,
            )
        )
    return rows


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that answers a whole to-do list as one job (e.g. a Ray Dataset), with the
    same quality checks and retries as :func:`generate_knowledge`, and yields the store rows
    (built with :func:`store_rows`) as parts of it finish; the runner saves each at once."""

    model_name: str

    def answer_stream(
        self,
        prompts: Sequence[PromptRecord],
        params: SamplingParams,
        *,
        max_retries: int,
        truncated: TruncatedPolicy,
        report: GenerationReport,
    ) -> Iterator[list[dict[str, Any]]]: ...


def _answered(
    pending: Sequence[PromptRecord],
    backend: GenerationBackend,
    params: SamplingParams,
    batch_size: int,
    max_retries: int,
    truncated: TruncatedPolicy,
    report: GenerationReport,
) -> Iterator[list[dict[str, Any]]]:
    """Store rows for ``pending``, a part at a time: one job of a streaming backend, or one
    batch after another."""
    stream = getattr(backend, "answer_stream", None)  # after the to-do list: may load a model
    if stream is not None:
        yield from stream(
            pending, params, max_retries=max_retries, truncated=truncated, report=report
        )
        return
    for lo in range(0, len(pending), batch_size):
        batch = pending[lo : lo + batch_size]
        yield _answer_batch(batch, backend, params, max_retries, truncated, report)


def generate_knowledge(
    prompts: Sequence[PromptRecord],
    backend: GenerationBackend,
    store: KnowledgeStore,
    params: SamplingParams | None = None,
    batch_size: int = 16,
    max_retries: int = 1,
    progress: bool = True,
    truncated: TruncatedPolicy = "trim",
) -> GenerationReport:
    """Answer every prompt not yet in ``store`` and save each batch as soon as it is done.

    The store key is the prompt's call key + ``backend.model_name`` + ``params.key()``:
    a rerun skips answered prompts (0 LLM calls when all are done) and a killed run
    loses at most the batch in flight. Bad answers are retried ``max_retries`` times
    (see :func:`retry_params`), then stored as ``flagged``. ``truncated`` decides what
    an answer that hit the token limit is: ``trim`` (default) cuts it back to its last
    complete sentence when that keeps at least half of it (stored with finish_reason
    ``trimmed``) and retries it otherwise; ``retry`` always retries with more tokens;
    ``accept`` keeps it as it is. Token counts in the report
    cover the stored answers; ``llm_calls`` counts every prompt sent, retries included.
    A :class:`StreamingBackend` gets the whole to-do list as one job and its rows are saved
    as they stream back (a killed run loses only the answers not yet back, and the first
    answers of prompts waiting for a retry).
    """
    params = params or SamplingParams()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    unique: dict[tuple[str, str, str, str], PromptRecord] = {}
    for prompt in prompts:
        unique.setdefault(call_key(prompt), prompt)
    if len(unique) < len(prompts):
        log.warning("%d duplicate prompts ignored", len(prompts) - len(unique))
    report = GenerationReport(total=len(unique))
    console = Console(stderr=True)
    done = store.done_keys(unique.values(), backend.model_name, params.key())
    report.skipped_done = len(done)
    pending = sorted((p for k, p in unique.items() if k not in done), key=_prompt_length)
    if not pending:
        message = f"all {report.total} prompts already answered; 0 LLM calls"
        log.info(message)
        if progress:
            console.print(message)
        return report

    log.info(
        "%d prompts: %d already answered, %d to generate with %s",
        report.total,
        len(done),
        len(pending),
        backend.model_name,
    )
    saved = 0
    start = time.perf_counter()
    bar = Progress(
        TextColumn("[bold]generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
        transient=False,
    )
    try:
        with bar:
            task = bar.add_task("generate", total=len(pending), rate=0.0)
            parts = _answered(pending, backend, params, batch_size, max_retries, truncated, report)
            for rows in parts:
                store.write(rows)
                saved += len(rows)
                elapsed = time.perf_counter() - start
                bar.update(
                    task, advance=len(rows), rate=report.completion_tokens / max(elapsed, 1e-9)
                )
    except KeyboardInterrupt:
        message = (
            f"interrupted: {saved} answers saved in this run "
            f"({len(done) + saved} of {report.total} done); rerun to resume"
        )
        log.warning(message)
        console.print(f"[yellow]{message}")
        raise
    except KarError as exc:
        log.error("%s; %d answers saved in this run, rerun to resume", exc, saved)
        raise
    finally:
        report.seconds = time.perf_counter() - start
        report.tokens_per_s = report.completion_tokens / report.seconds if report.seconds else 0.0
    log.info(report.summary())
    if progress:
        console.print(report.summary())
    return report
