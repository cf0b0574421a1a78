"""What an online read returns: one user and candidate items as arrays a CTR model takes
(the readers are in :mod:`kar.features.serving`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    @property
    def affinity(self) -> np.ndarray:
        """(n,) float64: the user x item knowledge match ``<user, item>`` of each candidate,
        0 where either vector is missing: the value of Feast's
        ``knowledge_affinity:user_item_knowledge_dot`` (:mod:`kar.features.affinity`),
        computed here from the vectors just read (no second read)."""
        if self.user_missing or self.items.shape[-1] != self.user.shape[-1]:
            return np.zeros(len(self.items))
        dot = self.items.astype(np.float64) @ self.user.astype(np.float64)
        return np.where(self.items_missing, 0.0, dot)


def code_value(value: object) -> int:
    """A code read back from Feast (int, None or NaN) as an int, 0 for none."""
    if value is None:
        return 0
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return int(number) if np.isfinite(number) and number >= 1 else 0
