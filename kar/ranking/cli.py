"""``kar rank``: the LLM ranker (ReLLa) on a sampled test set of the project, its AUC with
the recent and with the retrieved history."""

from __future__ import annotations

from pathlib import Path

import typer

from kar.cli_helpers import PROJECT_DIR, console, guard, open_project


def rank(
    project: Path = PROJECT_DIR,
    rows: int = typer.Option(1000, "--rows", "-n", help="Test rows sampled (at random)."),
    history_len: int = typer.Option(10, "--history-len", "-k", help="History items per prompt."),
    selection: str = typer.Option(
        "recent,retrieved", help="History selections to score, comma-separated."
    ),
    backend: str = typer.Option(
        "transformers",
        help="transformers (generation.model: the bundled SmolLM2 by default) or openai "
        "(generation.openai: a server that returns logprobs, e.g. vllm serve).",
    ),
    batch_size: int = typer.Option(8, help="Prompts per forward pass (transformers)."),
    seed: int = typer.Option(0, help="Seed of the test-row sample."),
) -> None:
    """Ask the LLM "will the user like <item>? yes or no" for sampled test rows; print the
    AUC of P(yes) with the K most recent and the K retrieved (most similar) history items."""
    from kar.ranking.evaluate import rank_project

    proj = open_project(project)
    selections = tuple(s.strip() for s in selection.split(",") if s.strip())
    report = guard(
        lambda: rank_project(
            proj.folder, (proj.dataset, proj.split), backend=backend, batch_size=batch_size,
            progress=True, rows=rows, history_len=history_len, selections=selections, seed=seed,
        )
    )  # fmt: skip
    for line in report.lines():
        console.print(line, markup=False, soft_wrap=True)
