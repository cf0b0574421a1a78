"""``kar export``: the project's knowledge vectors for FuxiCTR / DeepCTR-Torch / torch-rechub /
RecBole (registered in kar/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from kar.cli_helpers import PROJECT_DIR, console, guard, open_project


def export(
    fmt: str = typer.Option(..., "--format", "-f", help="fuxictr | deepctr | rechub | recbole"),
    out: Path = typer.Option(None, "--out", "-o", help="Folder (default artifacts/exports/<fmt>)."),
    codes: int = typer.Option(
        0, help="Also export k-means knowledge codes with this codebook size (0: none)."
    ),
    project: Path = PROJECT_DIR,
) -> None:
    """Write the adapted knowledge vectors in a CTR library's own input format."""
    from kar.exports import export_project

    folder = open_project(project).folder
    manifest = guard(export_project, folder, fmt, out, codebook_size=codes)
    for kind, info in manifest["kinds"].items():
        console.print(f"{kind}: {', '.join(info['files'])}")
    if "feature_config" in manifest:
        console.print(f"feature config snippet: {manifest['feature_config']}")
