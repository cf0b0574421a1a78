"""The ``kar`` command: a thin typer layer over :mod:`kar.pipeline`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kar.data.demo import DEMO_USERS
from kar.exports.cli import export as export_command
from kar.features.cli import register as register_feature_commands
from kar.models.cli import models_app
from kar.refresh.cli import refresh_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Feast's dependencies (ibis, dask) warn about their own deprecations on every call.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

app = typer.Typer(
    help="kar: LLM knowledge features for recommenders, published in Feast.\n\n"
    "Stages, in order: init -> generate -> encode -> train -> publish -> evaluate; "
    "`kar quickstart` runs them all on the demo.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Datasets: download MovieLens.", no_args_is_help=True)
features_app = typer.Typer(help="Knowledge features in the Feast repository.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
register_feature_commands(features_app)  # kar/features/cli.py (issue 5)
app.add_typer(refresh_app, name="refresh")  # kar/refresh/cli.py (issue 6)
app.add_typer(models_app, name="models")  # kar/models/cli.py (issue 4)
app.command("export")(export_command)  # kar/exports/cli.py (issue 4)
console = Console()

ProjectDir = typer.Option(Path("."), "--project", "-p", help="Project folder (with kar.yaml).")


def _project(root: Path):
    from kar.project import Project

    return Project.load(root)


def _on_project(stage, root: Path, **kwargs):
    """Load the project at ``root`` and run ``stage`` on it, with kar's error handling."""
    return _run(lambda: stage(_project(root), **kwargs))


def _run(fn, *args, **kwargs):
    """Call a stage; turn kar's errors into one red line and exit code 1."""
    from kar.errors import KarError

    try:
        return fn(*args, **kwargs)
    except KarError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:
        console.print("[yellow]interrupted[/yellow]: finished work is saved; rerun to resume.")
        raise typer.Exit(130) from exc


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Folder to create the project in."),
    users: int = typer.Option(DEMO_USERS, help="Number of synthetic demo users."),
    seed: int = typer.Option(0, help="Seed of the synthetic demo users."),
    force: bool = typer.Option(False, help="Overwrite an existing kar.yaml."),
) -> None:
    """Create a project: demo dataset, scenario prompts, adaptor configs, Feast repository."""
    from kar.pipeline import init_project

    project = _run(init_project, directory, n_users=users, seed=seed, force=force)
    console.print(f"created kar project in [bold]{project.root}[/bold] (settings: kar.yaml)")


@app.command()
def generate(
    project: Path = ProjectDir,
    limit: int = typer.Option(None, help="At most this many prompts per kind (for a trial)."),
    backend: str = typer.Option(
        None, help="For this run: transformers | vllm | openai (default: kar.yaml's)."
    ),
    speculative: str = typer.Option(
        None, help="For this run (transformers): off | exact | relaxed (default: kar.yaml's)."
    ),
) -> None:
    """Ask the LLM the user-preference and item-fact questions (resumable)."""
    from kar.pipeline import run_generate

    def with_overrides(proj, **kwargs):
        gen = proj.settings.generation.model_dump()
        if backend is not None:
            gen["backend"] = backend
        if speculative is not None:
            gen["speculative"]["mode"] = speculative
        try:
            settings = proj.settings.model_validate(
                {**proj.settings.model_dump(), "generation": gen}
            )
        except ValueError as exc:
            from kar.errors import ConfigError

            raise ConfigError(f"--backend/--speculative: {exc}") from exc
        proj.settings = settings
        return run_generate(proj, **kwargs)

    reports = _on_project(with_overrides, project, limit=limit)
    for kind, report in reports.items():
        console.print(f"{kind}: {report.summary()}")


@app.command()
def encode(project: Path = ProjectDir) -> None:
    """Encode the answers into vectors (cached by text hash)."""
    from kar.pipeline import run_encode

    vectors = _on_project(run_encode, project)
    console.print(
        f"encoded {vectors.users.height} users and {vectors.items.height} items "
        f"into {vectors.dim}-dim vectors ({vectors.encoder_id})"
    )


@app.command()
def train(project: Path = ProjectDir) -> None:
    """Train the hybrid-expert adaptor with a backbone CTR model and export adapted vectors."""
    from kar.pipeline import run_train

    result = _on_project(run_train, project)
    console.print(
        f"trained: valid AUC {result.valid_auc:.4f}, test AUC {result.test_auc:.4f} "
        f"(best epoch {result.best_epoch})"
    )


@app.command()
def publish(project: Path = ProjectDir) -> None:
    """Publish the adapted vectors to Feast (offline Parquet, apply, materialise online)."""
    from kar.pipeline import run_publish

    report = _on_project(run_publish, project)
    console.print(f"published {report.summary()}")


@app.command()
def evaluate(
    project: Path = ProjectDir,
    seeds: int = typer.Option(None, help="Number of seeds (default: kar.yaml)."),
) -> None:
    """AUC / LogLoss of each backbone with and without knowledge; markdown table + PNG."""
    from kar.pipeline import run_evaluate

    summary, md, png = _on_project(
        run_evaluate, project, seeds=list(range(seeds)) if seeds else None
    )
    console.print(md.read_text(), markup=False)
    console.print(f"report: {md}\nplot:   {png}")


@app.command()
def quickstart(
    directory: Path = typer.Argument(Path("."), help="Folder for the demo project."),
    users: int = typer.Option(DEMO_USERS, help="Number of synthetic demo users."),
) -> None:
    """Every stage on the demo: init, generate, encode, train, publish, evaluate, online read."""
    from kar.pipeline import run_quickstart

    _run(run_quickstart, directory, n_users=users, console=console)


@features_app.command("list")
def features_list(project: Path = ProjectDir) -> None:
    """List the knowledge feature views of the project's Feast repository."""
    from kar.features import list_knowledge_views

    views = _on_project(lambda p: list_knowledge_views(p.feature_repo), project)
    table = Table("feature view", "entities", "features", "tags")
    for view in views:
        table.add_row(
            view["name"],
            ", ".join(view["entities"]),
            ", ".join(f"{name}: {view['dtype']}" for name in view["features"]),
            ", ".join(f"{k}={v}" for k, v in view["tags"].items()),
        )
    console.print(table)


@features_app.command("online")
def features_online(
    user_id: str = typer.Argument(..., help="User id."),
    item_ids: list[str] = typer.Argument(..., help="Candidate item ids."),
    project: Path = ProjectDir,
) -> None:
    """Read the knowledge vectors of one user and candidate items from the online store."""
    from kar.features import OnlineKnowledge

    batch = _on_project(lambda p: OnlineKnowledge(p.feature_repo).get(user_id, item_ids), project)
    console.print(f"user {user_id}: missing={batch.user_missing} vector[:6]={batch.user[:6]}")
    for item_id, vec, missing in zip(item_ids, batch.items, batch.items_missing, strict=True):
        console.print(f"item {item_id}: missing={bool(missing)} vector[:6]={vec[:6]}")


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="movielens-100k | movielens-1m | movielens-latest-small"),
    dest: Path = typer.Option(Path("data"), help="Folder to unpack into."),
) -> None:
    """Download a MovieLens dataset from GroupLens (needs network access)."""
    from kar.data import fetch_dataset

    path = _run(fetch_dataset, name, dest)
    console.print(f"downloaded {name} to {path}")


def main() -> None:
    """The ``kar`` entry point.

    duckdb (under Feast's offline store) prints "nanobind: leaked instances" warnings while
    the interpreter tears down; once it is loaded, exit straight after flushing instead.
    """
    import logging
    import sys

    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if "duckdb" not in sys.modules:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
