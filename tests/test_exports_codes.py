"""``kar export --codes`` writes the knowledge codes Feast serves: the codebook ``kar publish``
saved, not a k-means refitted at export time (which numbers clusters its own way).

A small demo project with knowledge vectors written directly (no LLM), trained, published
to its real Feast repo (SQLite online store), exported, and read back online.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kar.adaptor.codes import CODEBOOK_FILE, knowledge_codes
from kar.encoding import EntityVectors
from kar.errors import ConfigError
from kar.exports import export_project
from kar.models.toydata import random_knowledge
from kar.pipeline import init_project

pytestmark = pytest.mark.slow  # trains a backbone, publishes to Feast
N_USERS = 40
SIZE = 6


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    """A demo project, trained (seed 3: publish seeds its codebook with it) and published."""
    import kar

    torch.set_num_threads(1)
    folder = init_project(tmp_path_factory.mktemp("codes") / "p", n_users=N_USERS)
    folder.settings.training.seed = 3
    folder.settings.training.tune = False
    folder.settings.training.eval_seeds = [3]
    folder.settings.training.backbone_configs = {"default": {"max_epochs": 2, "batch_size": 256}}
    folder.settings.features.codebook_size = SIZE
    folder.save()
    project = kar.Project(folder.root)
    users = random_knowledge(project.dataset.users["user_id"].to_list(), 5, seed=0)
    items = random_knowledge(project.dataset.items["item_id"].to_list(), 5, seed=1)
    EntityVectors(users, items, 5, "random-vectors").save(project.folder.encoded_dir)
    project.train(progress=False)
    project.publish()
    return project


def _exported_codes(out: Path, kind: str) -> dict[str, int]:
    index = json.loads((out / f"{kind}_index.json").read_text())
    codes = np.load(out / f"{kind}_knowledge_code.npy")
    return {entity: int(codes[row]) for entity, row in index.items()}


def test_exported_codes_equal_the_codes_feast_serves(published, tmp_path: Path) -> None:
    folder = published.folder
    assert (folder.knowledge_dir / CODEBOOK_FILE).is_file()  # what publish saved
    export_project(folder, "deepctr", tmp_path / "out", codebook_size=SIZE)
    users, items = (_exported_codes(tmp_path / "out", k) for k in ("user", "item"))

    online = published.online()
    item_ids = sorted(items)
    for user in sorted(users)[:10]:
        batch = online.get(user, item_ids)
        assert batch.user_code == users[user] != 0
        assert batch.item_codes.tolist() == [items[i] for i in item_ids]

    # the check above tells the bug apart: a codebook refitted at export (k-means, seed 0)
    # numbers the clusters otherwise, so its codes differ from Feast's
    import polars as pl

    vectors = [pl.read_parquet(folder.knowledge_dir / f"{k}_knowledge.parquet")
               for k in ("user", "item")]  # fmt: skip
    refit_users, _ = knowledge_codes(*vectors, SIZE)
    refit = dict(zip(refit_users["entity_id"], refit_users["code"], strict=True))
    assert any(refit[u] != code for u, code in users.items() if u in refit)


def test_export_with_another_codebook_size_says_which_to_use(published, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"--codes 4: .*has size {SIZE}.*--codes {SIZE}"):
        export_project(published.folder, "fuxictr", tmp_path / "out", codebook_size=4)
