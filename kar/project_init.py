"""Creating a project folder: the demo (``kar init``) or your own tables
(``kar init DIR --interactions FILE``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from kar.data.demo import DEMO_USERS
from kar.errors import ConfigError, KarError
from kar.project import CONFIG_FILE, ProjectFolder, ProjectSettings
from kar.project_data import import_knowledge, load_data
from kar.resources import bundled_dir

if TYPE_CHECKING:
    from kar.data.inspect import TableProposal
    from kar.data.schema import Dataset, Split


def init_project(
    dest: Path,
    *,
    n_users: int = DEMO_USERS,
    seed: int = 0,
    force: bool = False,
    demo: str = "standard",
) -> ProjectFolder:
    """Create a project: demo dataset, scenarios, adaptor configs and a Feast repository.

    ``demo``: ``standard``; ``grounded`` (items.csv gains a ``description``: each film's
    hidden traits in words, quoted into the item-fact prompt); ``oracle`` (the same texts
    also imported as the item knowledge, so the LLM answers only the user questions). Both
    variants are ORACLES: the texts state what the simulation hides (docs/data.md).
    """
    from kar.data import write_demo_dataset
    from kar.data.texts import DEMO_VARIANTS, write_demo_variant
    from kar.features import init_feature_repo
    from kar.features.engines import sync_batch_engine

    dest = Path(dest)
    if demo not in DEMO_VARIANTS:
        raise ConfigError(f"demo variant {demo!r}: expected one of {', '.join(DEMO_VARIANTS)}")
    if (dest / CONFIG_FILE).exists() and not force:
        raise KarError(f"{dest / CONFIG_FILE} already exists (use --force to overwrite)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("prompts", "experts"):
        shutil.copytree(bundled_dir(name), dest / name, dirs_exist_ok=True)
    write_demo_dataset(dest / "data", n_users=n_users, seed=seed)
    oracle_texts = write_demo_variant(dest / "data", demo)
    settings = ProjectSettings()
    if demo != "standard":
        settings.name = f"kar-demo-{demo}"
    # the demo is small (about 3,600 train rows): smaller batches, and each backbone's
    # learning rate and embedding weight decay chosen on validation (cheap at this size)
    settings.training.tune = True
    settings.training.backbone_configs = {"default": {"batch_size": 128}}
    project = ProjectFolder(dest, settings)
    fs = project.settings.features
    init_feature_repo(
        project.feature_repo, project=fs.project, online_store=fs.online_store, registry=fs.registry
    )
    sync_batch_engine(project.feature_repo, fs)
    project.save()
    if oracle_texts is not None:
        # the sentences name genres and decade themselves: without the title line the
        # encoder's vector is about the traits (docs/data.md)
        import_knowledge(project, oracle_texts.resolve(), source="demo-oracle", context=False)
    return project


def _data_path(file: Path, dest: Path) -> str:
    """How kar.yaml names a data file: relative inside the project folder, else absolute."""
    file = file.resolve()
    return str(file.relative_to(dest)) if file.is_relative_to(dest) else str(file)


def init_table_project(
    dest: Path,
    interactions: str | Path,
    items: str | Path | None = None,
    users: str | Path | None = None,
    *,
    item_noun: str = "item",
    mapping: dict[str, str] | None = None,
    factors: list[str] | None = None,
    force: bool = False,
) -> tuple[ProjectFolder, TableProposal, tuple[Dataset, Split]]:
    """A project over your own tables (``kar init DIR --interactions FILE``): the column
    mapping proposed from the headers and values (``mapping`` overrides a guess), kar.yaml
    named after the folder, a scenario scaffold ``prompts/<name>.yaml`` for ``item_noun``,
    adaptor configs and a Feast repository; then the data is validated once. No demo files.
    """
    from kar.data.inspect import (
        feast_project_name,
        propose_mapping,
        scenario_name,
        scenario_scaffold,
    )
    from kar.features import init_feature_repo
    from kar.features.engines import sync_batch_engine
    from kar.project import DatasetSettings

    dest = Path(dest).resolve()
    if (dest / CONFIG_FILE).exists() and not force:
        raise KarError(f"{dest / CONFIG_FILE} already exists (use --force to overwrite)")
    proposal = propose_mapping(interactions, items, users, mapping)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundled_dir("experts"), dest / "experts", dirs_exist_ok=True)
    scenario = scenario_name(dest.name)
    (dest / "prompts").mkdir(exist_ok=True)
    (dest / "prompts" / f"{scenario}.yaml").write_text(
        scenario_scaffold(
            scenario,
            item_noun,
            factors=factors,
            user_attributes=proposal.user_attributes,
            item_text_columns=proposal.item_text_columns,
            rating_max=proposal.rating_max,
        ),
        encoding="utf-8",
    )
    files = {"interactions": proposal.interactions, "items": proposal.items,
             "users": proposal.users}  # fmt: skip
    paths = {k: _data_path(v, dest) for k, v in files.items() if v is not None}
    settings = ProjectSettings(name=dest.name, scenario=scenario)
    settings.dataset = DatasetSettings.model_validate(proposal.dataset_settings(paths))
    settings.features.project = feast_project_name(dest.name)
    project = ProjectFolder(dest, settings)
    fs = settings.features
    init_feature_repo(
        project.feature_repo, project=fs.project, online_store=fs.online_store,
        registry=fs.registry, overwrite=force,
    )  # fmt: skip
    sync_batch_engine(project.feature_repo, fs)
    project.save()
    return project, proposal, load_data(project)
