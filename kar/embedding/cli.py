"""``kar embed`` (item embeddings, tuning, user tower) and ``kar features similar``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kar.cli_helpers import guard

console = Console()
_ProjectDir = typer.Option(Path("."), "--project", "-p", help="Project folder (with kar.yaml).")

embed_app = typer.Typer(
    help="LLM / encoder item and user embeddings for retrieval and cold start "
    "(settings: embedding.yaml; docs/embedding.md).",
    invoke_without_command=True,
)


def _load(project: Path):
    from kar.embedding.stage import EmbeddingProject

    return EmbeddingProject.load(project)


def _embed_and_publish(project: Path, raw: bool, publish: bool) -> None:
    from kar.embedding import stage

    proj = guard(lambda: _load(project))
    vectors = guard(lambda: stage.embed_items(proj, tuned=False if raw else None))
    console.print(
        f"embedded {vectors.items.height} items into {vectors.dim}-dim vectors "
        f"({vectors.encoder_id}) -> {proj.items_dir}"
    )
    if publish:
        report = guard(lambda: stage.publish(proj))
        console.print(
            f"published {report.items} item and {report.users} user vectors to Feast "
            f"({proj.repo}, {report.seconds:.1f} s)"
        )


@embed_app.callback()
def embed(
    ctx: typer.Context,
    project: Path = _ProjectDir,
    raw: bool = typer.Option(False, help="Use the base model even when a tuned one exists."),
    publish: bool = typer.Option(True, help="Publish to the embedding Feast repository."),
) -> None:
    """Embed every item (tuned model if `kar embed tune` ran) and publish them to Feast."""
    if ctx.invoked_subcommand is None:
        _embed_and_publish(project, raw, publish)


@embed_app.command("tune")
def tune(
    project: Path = _ProjectDir,
    publish: bool = typer.Option(True, help="Re-embed with the tuned model and publish."),
) -> None:
    """Contrastive tuning on co-occurring items (resumable), then re-embed and publish."""
    from kar.embedding import stage

    proj = guard(lambda: _load(project))
    result = guard(lambda: stage.tune(proj))
    scores = ", ".join(f"{s:.4f}" for s in result.scores)
    console.print(
        f"tuned ({result.method}): {result.steps} steps, best epoch {result.best_epoch + 1} "
        f"(valid Recall@10 per epoch: {scores}) -> {result.directory}"
    )
    _embed_and_publish(project, raw=False, publish=publish)


@embed_app.command("users")
def users(
    project: Path = _ProjectDir,
    publish: bool = typer.Option(True, help="Publish the user vectors to Feast."),
) -> None:
    """Train the user tower on the item embeddings and export one vector per user."""
    from kar.embedding import stage

    proj = guard(lambda: _load(project))
    tower, vectors = guard(lambda: stage.train_users(proj))
    console.print(
        f"user tower: best epoch {tower.best_epoch + 1}, {vectors.users.height} user vectors "
        f"-> {proj.users_dir}"
    )
    if publish:
        report = guard(lambda: stage.publish(proj))
        console.print(f"published {report.items} item and {report.users} user vectors to Feast")


def similar(
    item_id: str = typer.Argument(..., help="Item id."),
    k: int = typer.Option(10, "-k", help="How many neighbours."),
    project: Path = _ProjectDir,
) -> None:
    """Nearest items by embedding, through Feast vector search (i2i)."""
    from kar.embedding.feast_repo import similar_items

    proj = guard(lambda: _load(project))
    hits = guard(lambda: similar_items(proj.repo, item_id, k))
    table = Table("rank", "item", "cosine distance", "text", title=f"items similar to {item_id}")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), hit.entity_id, f"{hit.distance:.4f}", (hit.text or "")[:70])
    console.print(table)


def register(features_app: typer.Typer) -> None:
    """Add ``similar`` to the ``kar features`` sub-app."""
    features_app.command("similar")(similar)
