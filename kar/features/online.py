"""Online reads: one user and candidate items as arrays a CTR model takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kar.errors import FeatureStoreError
from kar.features.repo import (
    ITEM_CODE,
    ITEM_FEATURE,
    ITEM_VIEW,
    USER_CODE,
    USER_FEATURE,
    USER_VIEW,
    feature_store,
    read_settings,
)


@dataclass
class KnowledgeBatch:
    """Vectors for one request; unknown ids are zeros with a missing flag.

    ``user_code`` / ``item_codes``: the discrete knowledge codes (1..k) where the repo
    publishes them; 0 for "no code" (unknown id, or a repo without codes).
    """

    user: np.ndarray  # (d,) float32
    items: np.ndarray  # (n, d) float32, in the order of the requested item ids
    user_missing: bool
    items_missing: np.ndarray  # (n,) bool
    user_code: int = 0
    item_codes: np.ndarray | None = None  # (n,) int64; zeros when not given

    def __post_init__(self) -> None:
        if self.item_codes is None:
            self.item_codes = np.zeros(len(self.items), dtype=np.int64)


def code_value(value: object) -> int:
    """A code read back from Feast (int, None or NaN) as an int, 0 for none."""
    if value is None:
        return 0
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return int(number) if np.isfinite(number) and number >= 1 else 0


class OnlineKnowledge:
    """Reads the knowledge vectors (and codes) from the repo's online store (opened once)."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)
        settings = read_settings(self.repo)
        self.dim = int(settings["vector_dim"])
        self.codes = bool(settings.get("knowledge_codes", False))
        self.store = feature_store(self.repo)

    def _read(
        self, view: str, feature: str, code: str, key: str, ids: Sequence[str]
    ) -> tuple[list, list]:
        names = [feature, code] if self.codes else [feature]
        try:
            response = self.store.get_online_features(
                features=[f"{view}:{name}" for name in names],
                entity_rows=[{key: str(i)} for i in ids],
            ).to_dict()
        except Exception as exc:
            raise FeatureStoreError(f"online read of {view} failed in {self.repo}: {exc}") from exc
        codes = response[code] if self.codes else [None] * len(ids)
        return response[feature], codes

    def _stack(self, values: list, codes: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = np.zeros((len(values), self.dim), dtype=np.float32)
        missing = np.ones(len(values), dtype=bool)
        coded = np.zeros(len(values), dtype=np.int64)
        for i, (value, code) in enumerate(zip(values, codes, strict=True)):
            if value is not None and len(value) == self.dim:
                out[i] = value
                missing[i] = False
                coded[i] = code_value(code)
        return out, missing, coded

    def get(self, user_id: str, item_ids: Sequence[str]) -> KnowledgeBatch:
        """The user's vector and each candidate item's vector (zeros + flag when unknown),
        with their codes when the repo publishes them."""
        user, user_missing, user_code = self._stack(
            *self._read(USER_VIEW, USER_FEATURE, USER_CODE, "user_id", [user_id])
        )
        if item_ids:
            items, items_missing, item_codes = self._stack(
                *self._read(ITEM_VIEW, ITEM_FEATURE, ITEM_CODE, "item_id", item_ids)
            )
        else:
            items, items_missing = np.zeros((0, self.dim), np.float32), np.zeros(0, bool)
            item_codes = np.zeros(0, np.int64)
        return KnowledgeBatch(
            user[0], items, bool(user_missing[0]), items_missing, int(user_code[0]), item_codes
        )
