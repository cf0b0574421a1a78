"""``kar models ...``: the CTR backbones kar trains (registered in kar/cli.py)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

models_app = typer.Typer(help="CTR backbones (model zoo).", no_args_is_help=True)


@models_app.command("list")
def models_list() -> None:
    """List the backbones accepted by training.backbone / eval_backbones in kar.yaml."""
    from kar.models.registry import model_table

    table = Table("backbone", "class", "description")
    for row in model_table():
        table.add_row(*row)
    Console().print(table)
