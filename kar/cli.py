"""The ``kar`` command: a thin typer layer over :class:`kar.Project` (:mod:`kar.facade`);
all printing happens here."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kar.cli_helpers import PROJECT_DIR, console, guard, open_project
from kar.data.demo import DEMO_USERS
from kar.embedding.cli import embed_app
from kar.embedding.cli import register as register_embedding_commands
from kar.exports.cli import export as export_command
from kar.features.cli import register as register_feature_commands
from kar.generation.cli import knowledge_app
from kar.models.cli import models_app
from kar.ranking.cli import rank as rank_command
from kar.refresh.cli import refresh_app

if TYPE_CHECKING:
    from kar.encoding import EntityVectors
    from kar.facade import Project
    from kar.generation import GenerationReport
    from kar.models.train import TrainResult

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
config_app = typer.Typer(help="kar.yaml: its reference.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(features_app, name="features")
register_feature_commands(features_app)  # kar/features/cli.py (issue 5)
app.add_typer(refresh_app, name="refresh")  # kar/refresh/cli.py (issue 6)
app.add_typer(models_app, name="models")  # kar/models/cli.py (issue 4)
app.add_typer(knowledge_app, name="knowledge")  # kar/generation/cli.py (issue 21)
app.command("export")(export_command)  # kar/exports/cli.py (issue 4)
app.add_typer(embed_app, name="embed")  # kar/embedding/cli.py (issue 23)
register_embedding_commands(features_app)  # `kar features similar` (issue 23)
app.command("rank")(rank_command)  # kar/ranking/cli.py (issue 35: ReLLa)


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Folder to create the project in."),
    interactions: Path = typer.Option(
        None, help="Your interactions file (CSV / TSV / Parquet): a project over your data."
    ),
    items: Path = typer.Option(None, help="With --interactions: your items file."),
    users: str = typer.Option(
        None,
        help="With --interactions: your users file. Without: the number of synthetic demo "
        f"users (default {DEMO_USERS}).",
    ),
    item_noun: str = typer.Option("item", help="What your items are called (film, book, ...)."),
    factors: str = typer.Option(
        None, help="Comma-separated factors the LLM is asked about (default: generic ones)."
    ),
    map_: list[str] = typer.Option(
        None, "--map", help="kar column=your column, to override a guess (e.g. rating=stars)."
    ),
    seed: int = typer.Option(0, help="Seed of the synthetic demo users."),
    force: bool = typer.Option(False, help="Overwrite an existing kar.yaml."),
    demo: str = typer.Option(
        "standard",
        help="Demo variant: standard | grounded (items get a description) | oracle (the "
        "films' hidden traits in words imported as item knowledge). docs/data.md",
    ),
) -> None:
    """Create a project: over your tables (--interactions), or the demo dataset."""
    from kar.facade import Project

    if interactions is None:
        n_users = _demo_users(users)
        project = guard(Project.init, directory, n_users=n_users, seed=seed, force=force, demo=demo)
        console.print(f"created kar project in [bold]{project.root}[/bold] (settings: kar.yaml)")
        return
    project = guard(
        Project.init, directory, interactions=interactions, items=items, users=users,
        item_noun=item_noun, mapping=_mapping_option(map_),
        factors=[f.strip() for f in factors.split(",") if f.strip()] if factors else None,
        force=force,
    )  # fmt: skip
    _print_init(project)


def _demo_users(value: str | None) -> int:
    if value is None:
        return DEMO_USERS
    if not value.isdigit():
        console.print(f"[red]error:[/red] --users {value!r}: a number of demo users, or a users "
                      "file together with --interactions")  # fmt: skip
        raise typer.Exit(2)
    return int(value)


def _mapping_option(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            console.print(f"[red]error:[/red] --map {pair!r}: expected KAR_COLUMN=YOUR_COLUMN")
            raise typer.Exit(2)
        out[key.strip()] = value.strip()
    return out


def _print_init(project: Project) -> None:
    """What ``kar init --interactions`` found and wrote."""
    settings = project.settings
    console.print(f"created kar project [bold]{settings.name}[/bold] in {project.root}")
    for note in project.init_notes:
        console.print(f"  {note}", markup=False)
    console.print(f"kar.yaml dataset: {settings.dataset.model_dump(exclude_defaults=True)}",
                  markup=False)  # fmt: skip
    console.print(
        f"scenario: prompts/{settings.scenario}.yaml (edit its factors); Feast project "
        f"{settings.features.project}"
    )
    summary = guard(project.describe_data)
    for line in summary.lines():
        console.print(line, markup=False)
    console.print("next: kar generate --estimate, then kar generate (docs/configuration.md)")


@app.command()
def generate(
    project: Path = PROJECT_DIR,
    limit: int = typer.Option(
        None, min=0, help="At most this many prompts per kind (for a trial)."
    ),
    sample: int = typer.Option(
        None, min=1, help="A seeded random sample of this many users and items (for a trial)."
    ),
    estimate: bool = typer.Option(
        False, "--estimate", help="Only say what it would take (prompts, tokens, time)."
    ),
    backend: str = typer.Option(
        None,
        help="For this run: auto | transformers | vllm | openai | ray | a dotted class path "
        "(default: kar.yaml's).",
    ),
    speculative: str = typer.Option(
        None, help="For this run (transformers): off | exact | relaxed (default: kar.yaml's)."
    ),
) -> None:
    """Ask the LLM the user-preference and item-fact questions (resumable)."""
    proj = open_project(project)
    if limit == 0:
        console.print("nothing to do: --limit 0 asks for no prompts")
        return
    estimates = guard(proj.estimate, limit=limit, sample=sample, backend=backend)
    for line in estimates:
        console.print(("estimate " if not estimate else "") + line.line(), markup=False)
    if estimate:
        return
    reports = guard(
        proj.generate, limit=limit, sample=sample, backend=backend, speculative=speculative
    )
    _print_generation(reports)
    if not reports:
        console.print("nothing to do: imported texts cover every prompt, or there are none")
    _print_coverage(proj, "answers")


def _print_generation(reports: dict[str, GenerationReport]) -> None:
    for kind, report in reports.items():
        console.print(f"{kind}: {report.summary()}")


@app.command()
def encode(project: Path = PROJECT_DIR) -> None:
    """Encode the answers into vectors (cached by text hash)."""
    proj = open_project(project)
    _print_encoded(guard(proj.encode))
    _print_coverage(proj, "encoded")


def _print_coverage(project: Project, source: str) -> None:
    """The coverage line after generate / encode / publish, and its warnings."""
    coverage = guard(project.coverage, source)
    console.print(coverage.line(), markup=False)
    for warning in coverage.warnings():
        console.print(f"[yellow]warning:[/yellow] {warning}")


def _print_encoded(vectors: EntityVectors) -> None:
    console.print(
        f"encoded {vectors.users.height} users and {vectors.items.height} items "
        f"into {vectors.dim}-dim vectors ({vectors.encoder_id})"
    )


@app.command()
def train(project: Path = PROJECT_DIR) -> None:
    """Train the hybrid-expert adaptor with a backbone CTR model and export adapted vectors."""
    _print_trained(guard(open_project(project).train))


def _print_trained(result: TrainResult) -> None:
    import json

    from kar.adaptor.verdict import gain_lineage, verdict_line

    gate = "" if result.gate_open is None else f"; gate {'open' if result.gate_open else 'closed'}"
    console.print(
        f"trained: valid AUC {result.valid_auc:.4f}, test AUC {result.test_auc:.4f} "
        f"(best epoch {result.best_epoch}{gate})",
        markup=False,
    )
    if result.tuning:
        config = json.dumps(result.tuning.get("config"), sort_keys=True)
        console.print(f"configuration ({result.tuning.get('source')}): {config}", markup=False)
    if result.best_trained_epoch is not None:
        console.print(
            f"saved adaptor: trained epoch {result.best_trained_epoch} (valid AUC "
            f"{result.ungated_valid_auc:.4f}, test AUC {result.ungated_test_auc:.4f} without "
            "the gate)",
            markup=False,
        )
    console.print(verdict_line(gain_lineage(result.metrics())), markup=False)


@app.command()
def publish(
    project: Path = PROJECT_DIR,
    require_gain: bool = typer.Option(
        False, help="Refuse (nothing written) unless knowledge beat no knowledge on validation."
    ),
) -> None:
    """Publish the adapted vectors to Feast (offline Parquet, apply, materialise online)."""
    proj = open_project(project)
    report = guard(proj.publish, require_gain=require_gain)
    console.print(f"published {report.summary()}")
    _print_verdict(report.lineage)
    _print_coverage(proj, "published")


def _print_verdict(lineage: dict[str, str]) -> None:
    """One line: did knowledge beat no knowledge on validation (the published adaptor's)."""
    from kar.adaptor.verdict import verdict_line

    console.print(f"adaptor: {verdict_line(lineage)}", markup=False)


@app.command()
def evaluate(
    project: Path = PROJECT_DIR,
    seeds: int = typer.Option(None, help="Number of seeds (default: kar.yaml)."),
) -> None:
    """AUC / LogLoss of each backbone with and without knowledge; markdown table + PNG."""
    proj = open_project(project)
    report = guard(proj.evaluate, seeds=list(range(seeds)) if seeds else None)
    console.print(report.markdown.read_text(), markup=False)
    console.print(f"report: {report.markdown}\nplot:   {report.plot}")


@app.command()
def quickstart(
    directory: Path = typer.Argument(Path("."), help="Folder for the demo project."),
    users: int = typer.Option(DEMO_USERS, help="Number of synthetic demo users."),
    oracle: bool = typer.Option(
        False, help="The oracle demo: item knowledge = the films' hidden traits in words."
    ),
) -> None:
    """Every stage on the demo: init, generate, encode, train, publish, evaluate, online read."""
    from kar.facade import Project
    from kar.project import CONFIG_FILE

    if (directory / CONFIG_FILE).exists():
        project = open_project(directory)
        console.rule("[bold]kar quickstart[/bold]: resuming the project in " + str(project.root))
        if oracle and project.settings.name != "kar-demo-oracle":
            console.print("[yellow]--oracle ignored[/yellow]: this project exists already")
    else:
        console.rule("[bold]kar quickstart[/bold] 1/6 init")
        demo = "oracle" if oracle else "standard"
        project = guard(Project.init, directory, n_users=users, demo=demo)
        console.print(f"demo project (synthetic users, real film facts) in {project.root}")
        if oracle:
            console.print(
                "oracle variant: item knowledge = each film's hidden traits in words "
                "(imported, not asked of the LLM)"
            )
    guard(_quickstart_stages, project)


def _quickstart_stages(project: Project) -> None:
    """Steps 2-6 of ``kar quickstart``, each printed as it finishes."""
    import json

    from kar.features import list_knowledge_views

    console.rule("2/6 generate: the LLM reasons about users and states item facts")
    _print_generation(project.generate())
    console.rule("3/6 encode")
    _print_encoded(project.encode())
    console.rule("4/6 train the hybrid-expert adaptor jointly with a CTR model")
    _print_trained(project.train())
    console.rule("5/6 publish to Feast")
    published = project.publish()
    console.print("published " + published.summary())
    _print_verdict(published.lineage)
    views = list_knowledge_views(project.folder.feature_repo)
    console.print("feature views: " + ", ".join(v["name"] for v in views))
    user_id = project.split.test["user_id"][0]
    item_ids = project.split.test["item_id"].unique(maintain_order=True).head(5).to_list()
    batch = project.online().get(user_id, item_ids)
    console.print(
        f"online read: user {user_id} -> vector of {batch.user.shape[0]} floats "
        f"(missing={batch.user_missing}); {len(item_ids)} items -> {batch.items.shape}"
    )
    console.rule("6/6 evaluate: with vs without knowledge")
    report = project.evaluate()
    console.print(report.markdown.read_text(), markup=False)
    console.print(f"plot: {report.plot}")
    timings = json.loads(project.folder.timings_path.read_text())
    last = {stage: t["last_s"] if isinstance(t, dict) else t for stage, t in timings.items()}
    console.print("wall time per stage (s): " + json.dumps(last))


@features_app.command("online")
def features_online(
    user_id: str = typer.Argument(..., help="User id."),
    item_ids: list[str] = typer.Argument(..., help="Candidate item ids."),
    project: Path = PROJECT_DIR,
) -> None:
    """Read the knowledge vectors of one user and candidate items from the online store."""
    proj = open_project(project)
    batch = guard(lambda: proj.online().get(user_id, item_ids))
    console.print(f"user {user_id}: missing={batch.user_missing} vector[:6]={batch.user[:6]}")
    for item_id, vec, missing in zip(item_ids, batch.items, batch.items_missing, strict=True):
        console.print(f"item {item_id}: missing={bool(missing)} vector[:6]={vec[:6]}")


@config_app.command("docs")
def config_docs(
    out: Path = typer.Option(Path("docs/configuration.md"), help="Where to write it."),
) -> None:
    """Write the kar.yaml reference (every section and field, type, default, what it does)."""
    from kar.config_docs import write_configuration_doc

    path = guard(write_configuration_doc, out)
    console.print(f"wrote {path}")


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="movielens-100k | movielens-1m | movielens-latest-small"),
    dest: Path = typer.Option(Path("data"), help="Folder to unpack into."),
) -> None:
    """Download a MovieLens dataset from GroupLens (needs network access)."""
    from kar.data import fetch_dataset

    path = guard(fetch_dataset, name, dest)
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
