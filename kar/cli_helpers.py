"""What every ``kar`` sub-command shares: the console, the ``--project`` option, the
project it names, and the error guard (kar's errors as one red line and exit code 1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from kar.facade import Project

console = Console()
PROJECT_DIR = typer.Option(Path("."), "--project", "-p", help="Project folder (with kar.yaml).")

P = ParamSpec("P")
T = TypeVar("T")


def guard(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn``; a :class:`~kar.errors.KarError` becomes one red line and exit code 1,
    Ctrl-C a note that finished work is saved and exit code 130."""
    from kar.errors import KarError

    try:
        return fn(*args, **kwargs)
    except KarError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:
        console.print("[yellow]interrupted[/yellow]: finished work is saved; rerun to resume.")
        raise typer.Exit(130) from exc


def open_project(root: Path) -> Project:
    """The project in ``root`` (a missing or invalid kar.yaml is a guarded error)."""
    from kar.facade import Project

    return guard(Project, root)
