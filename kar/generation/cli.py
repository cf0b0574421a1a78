"""``kar knowledge``: bring your own texts into the knowledge store (``import``)."""

from __future__ import annotations

from pathlib import Path

import typer

from kar.cli_helpers import PROJECT_DIR, console, guard, open_project

knowledge_app = typer.Typer(
    help="The knowledge store: import your own user / item texts, list or forget them.",
    no_args_is_help=True,
)


@knowledge_app.command("import")
def import_command(
    file: Path = typer.Argument(..., help="CSV (UTF-8) or Parquet: entity_id, kind, text."),
    project: Path = PROJECT_DIR,
    source: str | None = typer.Option(
        None, "--source", "-s", help="Source name for lineage (default: the file name)."
    ),
    context: bool = typer.Option(
        True,
        help="Store each text with the item's title line / the user's history, as an LLM "
        "answer is (--no-context: the encoder sees the text alone).",
    ),
) -> None:
    """Import texts as user / item knowledge; bad rows go to artifacts/rejects/."""
    proj = open_project(project)
    report = guard(proj.import_knowledge, file.resolve(), source=source, context=context)
    colour = "yellow" if report.n_rejected else "green"
    console.print(f"[{colour}]imported[/{colour}] {report.summary()}", markup=True)


@knowledge_app.command("sources")
def sources_command(project: Path = PROJECT_DIR) -> None:
    """List the imported sources: texts per scenario and kind, and when last imported."""
    from rich.table import Table

    from kar.generation.imports import imported_sources

    proj = open_project(project)
    frame = guard(lambda: imported_sources(proj.store))  # opening the store is guarded too
    table = Table("source", "scenario", "kind", "texts", "last import")
    for row in frame.iter_rows():
        table.add_row(*(str(v) for v in row))
    console.print(table if frame.height else "no imported texts")


@knowledge_app.command("forget")
def forget_command(
    source: str = typer.Argument(..., help="Source name, as `kar knowledge sources` lists it."),
    project: Path = PROJECT_DIR,
) -> None:
    """Delete the texts imported from SOURCE; those entities go back to the LLM's answers."""
    from kar.generation.imports import forget_source

    proj = open_project(project)
    n = guard(lambda: forget_source(proj.store, source, proj.settings.scenario))
    console.print(f"forgot {n} texts imported from {source!r}; run `kar generate` for them")
