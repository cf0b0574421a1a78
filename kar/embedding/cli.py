"""``kar embed`` (item embeddings, tuning, SAID, user tower) and ``kar features similar``: each
calls a :class:`kar.Project` method and prints what it did."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from kar.cli_helpers import PROJECT_DIR, console, guard, open_project

if TYPE_CHECKING:
    from kar.embedding.stage import EmbeddingReport

embed_app = typer.Typer(
    help="LLM / encoder item and user embeddings for retrieval and cold start "
    "(settings: kar.yaml's embedding section; docs/embedding.md).",
    invoke_without_command=True,
)


def _print(report: EmbeddingReport) -> None:
    """One line per step the report ran."""
    paths = report.paths
    if report.tuning is not None:
        result = report.tuning
        scores = ", ".join(f"{s:.4f}" for s in result.scores)
        console.print(
            f"tuned ({result.method}): {result.steps} steps, best epoch {result.best_epoch + 1} "
            f"(valid Recall@10 per epoch: {scores}) -> {result.directory}"
        )
    if report.said is not None:
        said = report.said
        losses = " -> ".join(f"{x:.3f}" for x in said.losses)
        pace = f", {said.seconds_per_epoch:.0f} s per epoch" if said.seconds_per_epoch else ""
        console.print(
            f"SAID: {said.epochs_done} epoch(s), {said.steps} steps{pace}; the frozen LLM's "
            f"loss on the item texts per epoch: {losses or 'none yet'} -> {paths.said}"
        )
    if report.items is not None:
        vectors = report.items
        console.print(
            f"embedded {vectors.items.height} items into {vectors.dim}-dim vectors "
            f"({vectors.encoder_id}) -> {paths.items}"
        )
    if report.tower is not None and report.users is not None:
        console.print(
            f"user tower: best epoch {report.tower.best_epoch + 1}, "
            f"{report.users.users.height} user vectors -> {paths.users}"
        )
    if report.published is not None:
        published = report.published
        console.print(
            f"published {published.items} item and {published.users} user vectors to Feast "
            f"({paths.repo}, {published.seconds:.1f} s)"
        )


@embed_app.callback()
def embed(
    ctx: typer.Context,
    project: Path = PROJECT_DIR,
    raw: bool = typer.Option(False, help="Use the base model even when a tuned one exists."),
    publish: bool = typer.Option(True, help="Publish to the embedding Feast repository."),
) -> None:
    """Embed every item (tuned model if `kar embed tune` ran) and publish them to Feast."""
    if ctx.invoked_subcommand is None:
        proj = open_project(project)
        _print(guard(lambda: proj.embed(raw=raw, publish=publish)))


@embed_app.command("tune")
def tune(
    project: Path = PROJECT_DIR,
    publish: bool = typer.Option(True, help="Re-embed with the tuned model and publish."),
) -> None:
    """Contrastive tuning on co-occurring items (resumable), then re-embed and publish."""
    proj = open_project(project)
    _print(guard(lambda: proj.embed_tune(publish=publish)))


@embed_app.command("users")
def users(
    project: Path = PROJECT_DIR,
    publish: bool = typer.Option(True, help="Publish the user vectors to Feast."),
) -> None:
    """Train the user tower on the item embeddings and export one vector per user."""
    proj = open_project(project)
    _print(guard(lambda: proj.embed_users(publish=publish)))


@embed_app.command("said")
def said(
    project: Path = PROJECT_DIR,
    publish: bool = typer.Option(True, help="Publish the SAID item vectors to Feast."),
) -> None:
    """SAID: train an ID -> soft-token projection so the frozen LLM regenerates each item's
    text (resumable); its vectors become the item vectors, published to Feast."""
    proj = open_project(project)
    _print(guard(lambda: proj.embed_said(publish=publish)))


def similar(
    item_id: str = typer.Argument(..., help="Item id."),
    k: int = typer.Option(10, "-k", help="How many neighbours."),
    project: Path = PROJECT_DIR,
) -> None:
    """Nearest items by embedding, through Feast vector search (i2i)."""
    proj = open_project(project)
    hits = guard(lambda: proj.similar_items(item_id, k))
    table = Table("rank", "item", "cosine distance", "text", title=f"items similar to {item_id}")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), hit.entity_id, f"{hit.distance:.4f}", (hit.text or "")[:70])
    console.print(table)


def register(features_app: typer.Typer) -> None:
    """Add ``similar`` to the ``kar features`` sub-app."""
    features_app.command("similar")(similar)
