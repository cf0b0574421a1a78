"""Draft tokens as a tree: several continuations checked in one verification pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class DraftTree:
    """Draft tokens as a tree: token ``tokens[i]`` follows node ``parents[i]`` (-1: the
    last generated token); parents come before their children. A single draft is a chain
    (:meth:`chain`). One verification pass checks every path (a tree attention mask)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)

    @classmethod
    def chain(cls, tokens: Sequence[int]) -> DraftTree:
        """The tree of one draft: each token follows the one before."""
        return cls(list(tokens), list(range(-1, len(tokens) - 1)))

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int) -> int:
        """Node ``token`` under ``parent`` (made if missing); its number."""
        node = self.child(parent, token)
        if node is not None:
            return node
        if not -1 <= parent < len(self.tokens):
            raise ValueError(f"no node {parent} in a draft tree of {len(self.tokens)} nodes")
        self.tokens.append(token)
        self.parents.append(parent)
        return len(self.tokens) - 1

    def merge(self, other: DraftTree, limit: int) -> DraftTree:
        """Add ``other``'s nodes (in its order, shared paths once) while this tree has fewer
        than ``limit`` nodes; returns self."""
        mapped = {-1: -1}
        for node, (token, parent) in enumerate(zip(other.tokens, other.parents, strict=True)):
            if parent not in mapped:
                continue
            if len(self.tokens) >= limit and self.child(mapped[parent], token) is None:
                continue
            mapped[node] = self.add(mapped[parent], token)
        return self

    def child(self, parent: int, token: int) -> int | None:
        """The node ``token`` under ``parent``, if there is one."""
        for node, (t, p) in enumerate(zip(self.tokens, self.parents, strict=True)):
            if p == parent and t == token:
                return node
        return None

    def children(self) -> dict[int, list[int]]:
        """Node -> its children, in order (-1: the root's)."""
        out: dict[int, list[int]] = {-1: []}
        for node, parent in enumerate(self.parents):
            out.setdefault(parent, []).append(node)
            out.setdefault(node, [])
        return out

    def depths(self) -> list[int]:
        """Each node's depth (the root's children: 1)."""
        out: list[int] = []
        for parent in self.parents:
            out.append(1 if parent < 0 else out[parent] + 1)
        return out

    def path(self, node: int) -> list[int]:
        """The nodes from the root's child down to ``node``."""
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def follow(self, tokens: Sequence[int]) -> list[int]:
        """The nodes of the longest path spelling a prefix of ``tokens``."""
        kids = self.children()
        path: list[int] = []
        node = -1
        for token in tokens:
            nxt = next((c for c in kids[node] if self.tokens[c] == token), None)
            if nxt is None:
                break
            path.append(nxt)
            node = nxt
        return path
