"""``kar export``: the project's knowledge vectors for FuxiCTR / DeepCTR-Torch / torch-rechub /
RecBole (registered in kar/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def export(
    fmt: str = typer.Option(..., "--format", "-f", help="fuxictr | deepctr | rechub | recbole"),
    out: Path = typer.Option(None, "--out", "-o", help="Folder (default artifacts/exports/<fmt>)."),
    codes: int = typer.Option(
        0, help="Also export k-means knowledge codes with this codebook size (0: none)."
    ),
    project: Path = typer.Option(Path("."), "--project", "-p", help="Project folder."),
) -> None:
    """Write the adapted knowledge vectors in a CTR library's own input format."""
    from kar.errors import KarError
    from kar.exports import export_project
    from kar.project import Project

    console = Console()
    try:
        manifest = export_project(Project.load(project), fmt, out, codebook_size=codes)
    except KarError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    for kind, info in manifest["kinds"].items():
        console.print(f"{kind}: {', '.join(info['files'])}")
    if "feature_config" in manifest:
        console.print(f"feature config snippet: {manifest['feature_config']}")
