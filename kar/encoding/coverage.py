"""Knowledge coverage: the share of users, items and train / test rows that have knowledge.

Said after generate, encode and publish (``kar`` prints :meth:`Coverage.line`), so a trial
run with ``--limit`` or knowledge of one kind only is never mistaken for the whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from kar.data.schema import Dataset, Split

LOW_SHARE = 0.5  # below this share of test rows with knowledge, a warning says so


@dataclass(frozen=True)
class Coverage:
    """Counts and shares of entities and CTR rows with knowledge, per kind."""

    users: int
    users_total: int
    items: int
    items_total: int
    train_user: float  # share of train rows whose user has knowledge
    train_item: float
    test_user: float
    test_item: float

    def line(self) -> str:
        users = f"{self.users:,}/{self.users_total:,} ({_pct(self.users, self.users_total)})"
        items = f"{self.items:,}/{self.items_total:,} ({_pct(self.items, self.items_total)})"
        return (
            f"coverage: users {users}, items {items}; "
            f"rows with user / item knowledge: train {self.train_user:.0%} / "
            f"{self.train_item:.0%}, test {self.test_user:.0%} / {self.test_item:.0%}"
        )

    def warnings(self) -> list[str]:
        """Plain sentences for a kind without knowledge or a low share of test rows."""
        out = []
        for kind, count, share in (("user", self.users, self.test_user),
                                   ("item", self.items, self.test_item)):  # fmt: skip
            if count == 0:
                out.append(
                    f"no {kind} knowledge: every {kind} is marked missing (zeros + a missing "
                    f"flag) in train, publish and evaluate; only the other kind informs"
                )
            elif share < LOW_SHARE:
                out.append(
                    f"only {share:.0%} of test rows have {kind} knowledge: the rest are marked "
                    f"missing (run `kar generate` without --limit / --sample for all)"
                )
        return out


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def _share(rows: pl.DataFrame, col: str, ids: set[str]) -> float:
    if rows.height == 0:
        return 0.0
    return float(rows[col].is_in(list(ids)).mean() or 0.0)  # type: ignore[arg-type]


def knowledge_coverage(
    dataset: Dataset, split: Split, user_ids: Iterable[str], item_ids: Iterable[str]
) -> Coverage:
    """Coverage of the dataset's users, items and train / test rows by entities with
    knowledge (``user_ids`` / ``item_ids``; ids of other datasets are not counted)."""
    all_users = set(dataset.users["user_id"].to_list())
    all_items = set(dataset.items["item_id"].to_list())
    users = {str(u) for u in user_ids} & all_users
    items = {str(i) for i in item_ids} & all_items
    return Coverage(
        users=len(users),
        users_total=len(all_users),
        items=len(items),
        items_total=len(all_items),
        train_user=_share(split.train, "user_id", users),
        train_item=_share(split.train, "item_id", items),
        test_user=_share(split.test, "user_id", users),
        test_item=_share(split.test, "item_id", items),
    )
