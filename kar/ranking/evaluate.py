"""The LLM ranker's AUC on a sampled test set, with recent-K and retrieved-K histories."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from kar.errors import ConfigError
from kar.models.inputs import (
    HISTORY_SELECTIONS,
    behaviour_sequences,
    item_similarity,
    retrieved_sequences,
)
from kar.models.metrics import auc

if TYPE_CHECKING:
    from kar.data.schema import Dataset, Split
    from kar.project import ProjectFolder
    from kar.ranking.llm_ranker import YesNoScorer
    from kar.ranking.prompt import RankingPrompts

EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "label", "rating")
CHUNK = 64  # prompts per scorer call (the progress bar's step)


@dataclass
class RankReport:
    """AUC of the scorer's P(yes) per history selection, on the same sampled test rows."""

    model: str
    rows: int
    positives: int
    history_len: int
    auc: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    prompt_tokens: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """What ``kar rank`` prints: the sample, then one line per selection."""
        out = [
            f"LLM ranker {self.model}: {self.rows} sampled test rows ({self.positives} "
            f"positive), up to {self.history_len} history items per prompt"
        ]
        for name, value in self.auc.items():
            seconds, tokens = self.seconds[name], self.prompt_tokens[name]
            out.append(
                f"{name}-{self.history_len}: AUC {value:.4f} ({seconds:.0f} s, "
                f"{seconds / max(self.rows, 1):.2f} s/prompt, "
                f"{tokens / max(self.rows, 1):.0f} tokens/prompt)"
            )
        return out


def ranking_events(split: Split) -> pl.DataFrame:
    """Every interaction of the split (history + train + valid + test) with its rating
    (null where unknown), sorted by user and time: what histories are drawn from."""
    frames = [split.history, split.train, split.valid, split.test]
    frames = [
        f.with_columns(pl.lit(None, pl.Float64).alias("rating")) if "rating" not in f.columns else f
        for f in frames
    ]
    events = pl.concat([f.select(EVENT_COLUMNS) for f in frames], how="vertical_relaxed")
    return events.sort("user_id", "timestamp", maintain_order=True)


def ranking_sample(split: Split, rows: int, seed: int = 0) -> pl.DataFrame:
    """``rows`` test rows drawn at random (all of them when fewer), in time order."""
    if rows < 1:
        raise ConfigError(f"the ranking sample needs at least one row, got {rows}")
    test = split.test.select(EVENT_COLUMNS[:4])
    if test.height > rows:
        test = test.sample(rows, seed=seed)
    return test.sort("timestamp", "user_id", maintain_order=True)


def history_rows(
    events: pl.DataFrame,
    samples: pl.DataFrame,
    length: int,
    selection: str,
    item_vectors: pl.DataFrame | None = None,
) -> np.ndarray:
    """(n, length) rows of ``events`` per sample: the recent or the retrieved history."""
    similarity = item_similarity(selection, item_vectors)
    if similarity is None:
        return behaviour_sequences(events, samples, length)
    return retrieved_sequences(events, samples, length, similarity)


def rank_auc(
    scorer: YesNoScorer,
    prompts: RankingPrompts,
    split: Split,
    *,
    rows: int = 1000,
    history_len: int = 10,
    selections: Sequence[str] = HISTORY_SELECTIONS,
    item_vectors: pl.DataFrame | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RankReport:
    """Score the same sampled test rows once per history selection; AUC of P(yes)."""
    events = ranking_events(split)
    samples = ranking_sample(split, rows, seed)
    labels = samples["label"].to_numpy()
    report = RankReport(scorer.name, samples.height, int(labels.sum()), history_len)
    for selection in selections:
        history = history_rows(events, samples, history_len, selection, item_vectors)
        texts = prompts.prompts(events, samples, history)
        before = getattr(scorer, "prompt_tokens", 0)
        start = time.perf_counter()
        scores = score_all(scorer, texts, progress, f"{selection} history")
        report.seconds[selection] = time.perf_counter() - start
        report.prompt_tokens[selection] = getattr(scorer, "prompt_tokens", 0) - before
        report.auc[selection] = auc(labels, scores)
    return report


def score_all(scorer: YesNoScorer, texts: list[str], progress: bool, what: str) -> np.ndarray:
    """``scorer.score`` over ``texts`` in chunks, with a progress bar when ``progress``."""
    chunks = [texts[i : i + CHUNK] for i in range(0, len(texts), CHUNK)]
    if not chunks:
        return np.zeros(0)
    if progress:
        from rich.progress import track

        return np.concatenate([scorer.score(c) for c in track(chunks, f"scoring, {what}")])
    return np.concatenate([scorer.score(c) for c in chunks])


def rank_project(
    folder: ProjectFolder,
    data: tuple[Dataset, Split],
    *,
    backend: str = "transformers",
    batch_size: int = 8,
    progress: bool = False,
    **options: Any,
) -> RankReport:
    """:func:`rank_auc` on a project: its scenario's prompts, its item text vectors (for
    ``retrieved``) and the ranker ``backend`` names (:func:`make_scorer`); ``options`` are
    :func:`rank_auc`'s (rows, history_len, selections, seed)."""
    from kar.project_data import load_scenario
    from kar.ranking.item_vectors import item_text_vectors
    from kar.ranking.llm_ranker import make_scorer
    from kar.ranking.prompt import RankingPrompts

    dataset, split = data
    selections = options.get("selections", HISTORY_SELECTIONS)
    vectors = item_text_vectors(folder, dataset) if "retrieved" in selections else None
    scorer = make_scorer(folder.settings.generation, backend, batch_size)
    prompts = RankingPrompts(dataset.items, load_scenario(folder))
    return rank_auc(scorer, prompts, split, item_vectors=vectors, progress=progress, **options)
