"""``kar features list / add / describe / retire / versions``: the knowledge feature views,
declared, versioned knowledge features."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from kar.cli_helpers import PROJECT_DIR, console, guard, open_project


def _repo(project: Path) -> Path:
    return open_project(project).folder.feature_repo


def add(
    spec: Path = typer.Argument(..., help="YAML file: one feature or a list (name, version, ...)."),
    project: Path = PROJECT_DIR,
) -> None:
    """Declare knowledge feature versions and register their Feast objects."""
    from kar.features.declare import add_features, load_declarations

    def run():
        return add_features(_repo(project), load_declarations(spec))

    added = guard(run)
    for feature in added:
        console.print(
            f"registered {feature.view}: feature view, {feature.view}_push, "
            f"{feature.view}_service ({feature.entity}, {feature.dim} dims)"
        )
    if not added:
        console.print("nothing new: every declaration in the file is already registered")


def describe(
    name: str = typer.Argument(..., help="Feature name."),
    version: int = typer.Option(None, help="Version (default: every version)."),
    project: Path = PROJECT_DIR,
) -> None:
    """Show a declared feature's versions, lineage and Feast objects."""
    from kar.features.declare import describe_feature, list_features

    def run():
        repo = _repo(project)
        versions = [f.version for f in list_features(repo) if f.name == name]
        wanted = [version] if version is not None else versions or [None]
        return [describe_feature(repo, name, v) for v in wanted]

    for info in guard(run):
        console.print_json(json.dumps(info, default=str))


def retire(
    name: str = typer.Argument(..., help="Feature name."),
    version: int = typer.Argument(..., help="Version to retire."),
    project: Path = PROJECT_DIR,
) -> None:
    """Retire one version: its Feast objects are removed, its Parquet parts kept."""
    from kar.features.declare import retire_feature

    feature = guard(lambda: retire_feature(_repo(project), name, version))
    console.print(f"retired {feature.view}")


def versions(project: Path = PROJECT_DIR) -> None:
    """List every declared feature version, retired ones included."""
    from kar.features.declare import list_features

    table = Table("feature", "version", "entity", "dim", "status", "lineage")
    for f in guard(lambda: list_features(_repo(project))):
        lineage = f"prompt={f.prompt_version} llm={f.llm} encoder={f.encoder} adaptor={f.adaptor}"
        status = "retired" if f.retired else "active"
        table.add_row(f.name, str(f.version), f.entity, str(f.dim), status, lineage)
    console.print(table)


def list_views(project: Path = PROJECT_DIR) -> None:
    """List the knowledge feature views of the project's Feast repository, each feature with
    its type, and whether the published adaptor's knowledge beat no knowledge."""
    from kar.features import list_knowledge_views

    views = guard(list_knowledge_views, _repo(project))
    table = Table("feature view", "entities", "features", "tags")
    for view in views:
        types = view.get("types") or {name: view["dtype"] for name in view["features"]}
        name = view["name"]
        if view.get("on_demand"):  # computed when read, from its sources' vectors
            name += f"\n(on demand: {' x '.join(view.get('sources', []))})"
        table.add_row(
            name,
            ", ".join(view["entities"]),
            "\n".join(f"{name}: {dtype}" for name, dtype in types.items()),
            ", ".join(f"{k}={v}" for k, v in view["tags"].items()),
        )
    console.print(table)
    for line in verdict_lines(views):
        console.print(line, markup=False)


def verdict_lines(views: list[dict]) -> list[str]:
    """One line per distinct gain verdict in the views' tags (the lineage of the adaptor
    whose vectors they hold); nothing for views without one (e.g. declared features)."""
    from kar.adaptor.verdict import lineage_from_tags, verdict_line

    lines: dict[str, list[str]] = {}
    for view in views:
        if view.get("on_demand"):  # knowledge_affinity: derived from the views listed
            continue
        lineage = lineage_from_tags(view["tags"])
        if lineage.get("gate"):
            lines.setdefault(verdict_line(lineage), []).append(view["name"])
    return [f"{', '.join(names)}: {line}" for line, names in lines.items()]


def register(features_app: typer.Typer) -> None:
    """Add these commands to the ``kar features`` sub-app."""
    features_app.command("list")(list_views)
    features_app.command("add")(add)
    features_app.command("describe")(describe)
    features_app.command("retire")(retire)
    features_app.command("versions")(versions)
