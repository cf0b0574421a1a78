"""What every ``kar`` sub-command shares: the console, the ``--project`` option, the
project it names, and the error guard (kar's errors as one red line and exit code 1, with
every secret redacted: :mod:`kar.redaction`, also installed on every log record here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from kar.redaction import install_log_filter, redact, register_url

if TYPE_CHECKING:
    from kar.facade import Project

console = Console()
install_log_filter()
PROJECT_DIR = typer.Option(Path("."), "--project", "-p", help="Project folder (with kar.yaml).")

P = ParamSpec("P")
T = TypeVar("T")


def guard(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn``; a :class:`~kar.errors.KarError` becomes one red line (secrets redacted,
    never wrapped) and exit code 1, Ctrl-C a note that finished work is saved and exit
    code 130."""
    from kar.errors import KarError

    try:
        return fn(*args, **kwargs)
    except KarError as exc:
        console.print(Text.assemble(("error:", "red"), " ", one_line(exc)), soft_wrap=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:  # its message, if any, says what was saved
        saved = redact(str(exc)).strip() or "finished work is saved"
        console.print(
            Text.assemble(("interrupted", "yellow"), f": {saved}; rerun to resume."),
            soft_wrap=True,
        )
        raise typer.Exit(130) from exc


def one_line(exc: BaseException) -> str:
    """``exc``'s message, redacted, on one line (inner line breaks become ``; ``)."""
    lines = [line.strip() for line in redact(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def open_project(root: Path) -> Project:
    """The project in ``root`` (a missing or invalid kar.yaml is a guarded error); the
    password of its knowledge store URL is registered as a secret."""
    import os

    from kar.facade import Project

    project = guard(Project, root)
    register_url(os.path.expandvars(str(project.settings.knowledge_store)))
    return project
