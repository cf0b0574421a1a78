"""Run prompts through a backend into the knowledge store: resumable, batched, checked."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

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
from kar.generation.backend import (
    ChatMessages,
    GenerationBackend,
    StreamingBackend,
    TruncatedPolicy,
)
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
# without a terminal (output redirected to a log), a plain progress line this often
PLAIN_PROGRESS_EVERY_S = 30.0


def plain_progress_every() -> float:
    """Seconds between plain progress lines (``KAR_PROGRESS_EVERY_S`` overrides)."""
    try:
        return float(os.environ.get("KAR_PROGRESS_EVERY_S", PLAIN_PROGRESS_EVERY_S))
    except ValueError:
        return PLAIN_PROGRESS_EVERY_S


class PlainProgress:
    """Progress for a log file: a line at the start, then one every ``every`` seconds and
    at the end (a rich bar shows nothing until the end when stdout is not a terminal)."""

    def __init__(self, console: Console, kind: str, total: int, model: str, every: float) -> None:
        self.console, self.kind, self.total, self.every = console, kind, total, every
        self.start = self.last = time.perf_counter()
        self._print(f"generating {total} {kind} prompts with {model}")

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(self, done: int, tokens: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / done * (self.total - done) if done else 0.0
        self._print(
            f"generating {self.kind}: {done}/{self.total} prompts, {tokens} tokens, "
            f"{tokens / max(elapsed, 1e-9):.1f} tok/s, {elapsed:.0f} s elapsed, ~{left:.0f} s left"
        )


class PartialAnswers(KeyboardInterrupt):
    """Ctrl-C inside a backend's ``generate`` that answers prompts one by one (the OpenAI
    backend): ``outputs[i]`` is prompt i's answer, None where none came back. The runner
    saves the finished answers (collected in ``rows``) before the interrupt goes on."""

    def __init__(self, outputs: Sequence[GenerationOutput | None]) -> None:
        super().__init__()
        self.outputs = list(outputs)
        self.rows: list[dict[str, Any]] = []


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`generate_knowledge`, raised once every finished answer is
    saved; its message says how many (the CLI prints it as its one "interrupted" line)."""


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block is done (a store write is never cut in half), then
    raise it. Only in the main thread with Python's own SIGINT handler; else a no-op."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


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
    """Answer one batch (with retries of bad answers) and return the store rows.

    Interrupted inside the backend (:class:`PartialAnswers`), the rows of the answers that
    are final (usable, or out of retries) go with the interrupt."""
    state: dict[int, tuple[GenerationOutput, SamplingParams, int]] = {}  # output, params, tries
    indexes, used, attempt = list(range(len(batch))), params, 0
    try:
        outputs = _call_backend(backend, batch, params)
        state.update((i, (outputs[i], params, 1)) for i in indexes)
        report.llm_calls += len(batch)
        for attempt in range(1, max_retries + 1):
            groups: dict[SamplingParams, list[int]] = {}
            for i, (output, _, _) in state.items():
                reason = settle_answer(output, truncated)[1]
                if reason is not None:
                    groups.setdefault(retry_params(params, reason, attempt), []).append(i)
            if not groups:
                break
            for used, indexes in groups.items():
                retried = _call_backend(backend, [batch[i] for i in indexes], used)
                report.llm_calls += len(indexes)
                for i, output in zip(indexes, retried, strict=True):
                    state[i] = (output, used, attempt + 1)
    except PartialAnswers as exc:
        for i, output in zip(indexes, exc.outputs, strict=True):
            if output is not None:
                state[i] = (output, used, attempt + 1)
        final = [i for i in sorted(state) if _is_final(state[i], truncated, max_retries)]
        results = [state[i] for i in final]
        exc.rows = store_rows(
            [batch[i] for i in final], results, backend.model_name, params, truncated, report
        )
        raise
    results = [state[i] for i in range(len(batch))]
    return store_rows(batch, results, backend.model_name, params, truncated, report)


def _is_final(
    result: tuple[GenerationOutput, SamplingParams, int], truncated: TruncatedPolicy, retries: int
) -> bool:
    """Whether an answer is the one to store: usable, or its retries are used up."""
    output, _, attempts = result
    return attempts > retries or settle_answer(output, truncated)[1] is None


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


def _answered(
    pending: Sequence[PromptRecord],
    backend: GenerationBackend,
    params: SamplingParams,
    batch_size: int,
    max_retries: int,
    truncated: TruncatedPolicy,
    report: GenerationReport,
) -> Iterator[list[dict[str, Any]]]:
    """Store rows for ``pending``, a part at a time: one job of a
    :class:`~kar.generation.backend.StreamingBackend` (the one place that capability is
    checked), or one batch after another."""
    if isinstance(backend, StreamingBackend):
        yield from backend.answer_stream(
            pending, params, max_retries=max_retries, truncated=truncated, report=report
        )
        return
    yield from answer_in_batches(
        pending, backend, params, batch_size, max_retries, truncated, report
    )


def answer_in_batches(
    pending: Sequence[PromptRecord],
    backend: GenerationBackend,
    params: SamplingParams,
    batch_size: int,
    max_retries: int,
    truncated: TruncatedPolicy,
    report: GenerationReport,
) -> Iterator[list[dict[str, Any]]]:
    """Store rows for ``pending``, one batch (with its retries) after another."""
    for lo in range(0, len(pending), batch_size):
        batch = pending[lo : lo + batch_size]
        yield _answer_batch(batch, backend, params, max_retries, truncated, report)


AnswerParts = Iterator[list[tuple[int, GenerationOutput]]]


def answer_in_rounds(
    run: Callable[[Sequence[tuple[int, SamplingParams]]], AnswerParts],
    prompts: Sequence[PromptRecord],
    params: SamplingParams,
    model_name: str,
    *,
    max_retries: int,
    truncated: TruncatedPolicy,
    report: GenerationReport,
) -> Iterator[list[dict[str, Any]]]:
    """The job of a :class:`~kar.generation.backend.StreamingBackend`: every prompt in one
    ``run`` (then one per retry round), yielding store rows as each part comes back.

    ``run(requests)`` answers ``(i, sampling)`` requests (``i`` indexes ``prompts``) and
    yields ``(i, answer)`` pairs a part at a time, as the engine finishes them. Usable
    answers and answers out of retries are final; bad ones go out again together with the
    runner's retry sampling (:func:`retry_params`)."""
    state: dict[int, tuple[GenerationOutput, SamplingParams, int]] = {}
    requests = [(i, params) for i in range(len(prompts))]
    for attempt in range(max_retries + 1):
        sent = dict(requests)
        retry: list[tuple[int, SamplingParams]] = []
        for part in run(requests):
            report.llm_calls += len(part)
            final = []
            for i, output in part:
                state[i] = (output, sent[i], attempt + 1)
                reason = settle_answer(output, truncated)[1]
                if reason is None or attempt == max_retries:
                    final.append(i)
                else:
                    retry.append((i, retry_params(params, reason, attempt + 1)))
            if final:
                yield store_rows(
                    [prompts[i] for i in final],
                    [state[i] for i in final],
                    model_name,
                    params,
                    truncated,
                    report,
                )
        if not retry:
            return
        log.info("%d answers to retry (round %d)", len(retry), attempt + 1)
        requests = sorted(retry, key=lambda request: request[0])


class StreamsInRounds:
    """What a backend whose ``stream(chats, requests)`` answers ``(i, sampling)`` requests
    as an engine finishes them (yielding ``(i, answer)`` parts) needs to be a
    :class:`~kar.generation.backend.StreamingBackend`: its ``answer_stream`` is
    :func:`answer_in_rounds` over that ``stream`` (the vLLM and Ray backends)."""

    model_name: str

    def stream(
        self, chats: Sequence[ChatMessages], requests: Sequence[tuple[int, SamplingParams]]
    ) -> AnswerParts:
        raise NotImplementedError

    def answer_stream(
        self,
        prompts: Sequence[PromptRecord],
        params: SamplingParams,
        *,
        max_retries: int,
        truncated: TruncatedPolicy,
        report: GenerationReport,
    ) -> Iterator[list[dict[str, Any]]]:
        """Every prompt in one ``stream`` job (then one per retry round), yielding store rows
        as answers come back: the runner saves each part at once, so a killed run loses only
        the answers still in the engine."""
        chats = [p.messages for p in prompts]
        yield from answer_in_rounds(
            lambda requests: self.stream(chats, requests),
            prompts,
            params,
            self.model_name,
            max_retries=max_retries,
            truncated=truncated,
            report=report,
        )


def _unique_prompts(
    prompts: Sequence[PromptRecord],
) -> dict[tuple[str, str, str, str], PromptRecord]:
    """``prompts`` by call key, the first of each; duplicates are logged and dropped."""
    unique: dict[tuple[str, str, str, str], PromptRecord] = {}
    for prompt in prompts:
        unique.setdefault(call_key(prompt), prompt)
    if len(unique) < len(prompts):
        log.warning("%d duplicate prompts ignored", len(prompts) - len(unique))
    return unique


def _progress_bar(console: Console, disable: bool) -> Progress:
    """The rich bar of a generation run (tokens per second beside the count)."""
    return Progress(
        TextColumn("[bold]generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


@dataclass
class _Saving:
    """Writes each part of a run to the store as it comes back, and shows progress."""

    store: KnowledgeStore
    report: GenerationReport
    console: Console
    model_name: str
    progress: bool
    start: float = dataclasses.field(default_factory=time.perf_counter)
    saved: int = 0

    def run(self, pending: Sequence[PromptRecord], parts: Iterator[list[dict[str, Any]]]) -> None:
        """Save every part of ``parts`` (answers to ``pending``), each under deferred Ctrl-C."""
        plain = None
        if self.progress and not self.console.is_terminal:
            every = plain_progress_every()
            plain = PlainProgress(
                self.console, pending[0].kind, len(pending), self.model_name, every
            )
        bar = _progress_bar(self.console, disable=not self.progress or plain is not None)
        with bar:
            task = bar.add_task("generate", total=len(pending), rate=0.0)
            for rows in parts:
                with _sigint_deferred():  # Ctrl-C now: raised once the batch is saved
                    self.store.write(rows)
                    self.saved += len(rows)
                elapsed = time.perf_counter() - self.start
                rate = self.report.completion_tokens / max(elapsed, 1e-9)
                bar.update(task, advance=len(rows), rate=rate)
                if plain is not None:
                    plain.update(self.saved, self.report.completion_tokens)

    def interrupted(
        self, exc: KeyboardInterrupt, pending: Sequence[PromptRecord], done: int
    ) -> GenerationInterrupted:
        """Save the answers a :class:`PartialAnswers` brings back; the error to raise."""
        finished = getattr(exc, "rows", [])  # a PartialAnswers: the answers that came back
        with suppress(KeyboardInterrupt), _sigint_deferred():  # pressed again: stopping anyway
            self.store.write(finished)
            self.saved += len(finished)
        kinds = {p.kind for p in pending}
        kind = f"{kinds.pop()} " if len(kinds) == 1 else ""
        message = (
            f"{self.saved} {kind}answers saved in this run "
            f"({done + self.saved} of {self.report.total} {kind}prompts done)"
        )
        log.info("interrupted: %s; rerun to resume", message)
        return GenerationInterrupted(message)

    def finish(self) -> None:
        """Set the report's wall time and throughput."""
        report = self.report
        report.seconds = time.perf_counter() - self.start
        report.tokens_per_s = report.completion_tokens / report.seconds if report.seconds else 0.0


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
    A :class:`~kar.generation.backend.StreamingBackend` gets the whole to-do list as one job
    and its rows are saved as they stream back (a killed run loses only the answers not yet
    back, and the first answers of prompts waiting for a retry). Ctrl-C waits for a store
    write under way, saves the answers a :class:`PartialAnswers` brings back, and raises
    :class:`GenerationInterrupted` saying how many answers were saved.
    """
    params = params or SamplingParams()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    unique = _unique_prompts(prompts)
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
    saving = _Saving(store, report, console, backend.model_name, progress)
    try:
        parts = _answered(pending, backend, params, batch_size, max_retries, truncated, report)
        saving.run(pending, parts)
    except KeyboardInterrupt as exc:
        raise saving.interrupted(exc, pending, len(done)) from None
    except KarError as exc:
        log.error("%s; %d answers saved in this run, rerun to resume", exc, saving.saved)
        raise
    finally:
        saving.finish()
    log.info(report.summary())
    if progress:
        console.print(report.summary())
    return report
