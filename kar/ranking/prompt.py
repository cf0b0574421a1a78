"""ReLLa's zero-shot ranking prompt: the user's history (items with their ratings or likes),
then "will the user like <target>? Answer yes or no"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from kar.prompts.builders import item_titles
from kar.prompts.sanitize import quote

if TYPE_CHECKING:
    from kar.prompts import Scenario


class RankingPrompts:
    """Prompts for one catalogue: titles quoted and capped as the scenario says (item titles
    are data, never instructions), its item noun and rating scale."""

    def __init__(self, items: pl.DataFrame, scenario: Scenario) -> None:
        self.noun = scenario.item_noun
        self.rating_max = scenario.rating_max
        self.titles = item_titles(items, scenario, set(items["item_id"].cast(pl.Utf8)))

    def item(self, item_id: str) -> str:
        """``"Heat" (1995)``: the quoted title, and its year unless the title has it."""
        title, year = self.titles.get(item_id) or (quote(f"{self.noun} {item_id}"), None)
        return title + (f" ({year})" if year is not None and str(year) not in title else "")

    def line(self, item_id: str, rating: float | None, label: int | None) -> str:
        """One history entry: the item, then ``rated 4/5`` or ``liked`` / ``not liked``."""
        text = self.item(item_id)
        if rating is not None and not np.isnan(rating):
            scale = f"/{self.rating_max:g}" if self.rating_max else ""
            return f"{text}, rated {rating:g}{scale}"
        if label is not None:
            return f"{text}, {'liked' if label else 'not liked'}"
        return text

    def prompt(self, history: Sequence[str], target: str) -> str:
        """The question for one sample: ``history`` lines (oldest first), the target item id."""
        noun = self.noun
        if history:
            lines = "\n".join(f"{i}. {line}" for i, line in enumerate(history, 1))
            told = f"The user interacted with these {noun}s, oldest first:\n{lines}\n"
        else:
            told = f"The user has not interacted with any {noun} yet.\n"
        return (
            f"{told}Based on this history, will the user like the {noun} "
            f"{self.item(target)}? Answer yes or no."
        )

    def prompts(self, events: pl.DataFrame, samples: pl.DataFrame, rows: np.ndarray) -> list[str]:
        """One prompt per sample: ``rows`` (n, K) are its history as rows of ``events``
        (item_id, label, and rating if known), -1 padding."""
        items = events["item_id"].cast(pl.Utf8).to_list()
        labels = events["label"].to_list()
        ratings = events["rating"].to_list() if "rating" in events.columns else [None] * len(items)
        out = []
        for target, history in zip(samples["item_id"].cast(pl.Utf8), rows, strict=True):
            lines = [self.line(items[r], ratings[r], labels[r]) for r in history if r >= 0]
            out.append(self.prompt(lines, target))
        return out
