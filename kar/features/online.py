"""Online reads: one user and candidate items as arrays a CTR model takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kar.errors import FeatureStoreError
from kar.features.repo import (
    ITEM_FEATURE,
    ITEM_VIEW,
    USER_FEATURE,
    USER_VIEW,
    feature_store,
    read_settings,
)


@dataclass
class KnowledgeBatch:
    """Vectors for one request; unknown ids are zeros with a missing flag."""

    user: np.ndarray  # (d,) float32
    items: np.ndarray  # (n, d) float32, in the order of the requested item ids
    user_missing: bool
    items_missing: np.ndarray  # (n,) bool


class OnlineKnowledge:
    """Reads the knowledge vectors from the repo's online store (opened once)."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)
        self.dim = int(read_settings(self.repo)["vector_dim"])
        self.store = feature_store(self.repo)

    def _read(self, view: str, feature: str, key: str, ids: Sequence[str]) -> list:
        try:
            response = self.store.get_online_features(
                features=[f"{view}:{feature}"], entity_rows=[{key: str(i)} for i in ids]
            )
            return response.to_dict()[feature]
        except Exception as exc:
            raise FeatureStoreError(f"online read of {view} failed in {self.repo}: {exc}") from exc

    def _stack(self, values: list) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(values), self.dim), dtype=np.float32)
        missing = np.ones(len(values), dtype=bool)
        for i, value in enumerate(values):
            if value is not None and len(value) == self.dim:
                out[i] = value
                missing[i] = False
        return out, missing

    def get(self, user_id: str, item_ids: Sequence[str]) -> KnowledgeBatch:
        """The user's vector and each candidate item's vector (zeros + flag when unknown)."""
        user, user_missing = self._stack(self._read(USER_VIEW, USER_FEATURE, "user_id", [user_id]))
        if item_ids:
            items, items_missing = self._stack(
                self._read(ITEM_VIEW, ITEM_FEATURE, "item_id", item_ids)
            )
        else:
            items, items_missing = np.zeros((0, self.dim), np.float32), np.zeros(0, bool)
        return KnowledgeBatch(user[0], items, bool(user_missing[0]), items_missing)
