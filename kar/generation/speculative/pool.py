"""Draft tokens from a pool of earlier answers: an n-gram index over token sequences.

Speculative decoding from a knowledge pool (DARE/LASER style): answers of the same
scenario and kind are phrased alike, so the continuation of the last few generated tokens
in an earlier answer is a good guess of what the model says next. :class:`NgramIndex`
maps every n-gram (``min_n..max_n`` tokens) to where it ends; :meth:`NgramIndex.draft`
walks the continuations of all matches of the longest matching suffix and follows the
most common next token (a trie walk over the matches), so the draft is what most similar
answers said. :class:`KnowledgePool` holds one index per (scenario, kind), built from a
:class:`~kar.generation.store.KnowledgeStore`, and routes a conversation to its index by
the prompt hash of registered :class:`~kar.records.PromptRecord`\\ s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from kar.errors import ConfigError
from kar.generation.speculative.tree import DraftTree
from kar.records import PromptRecord, stable_hash

if TYPE_CHECKING:
    from kar.generation.backend import ChatMessages
    from kar.generation.store import KnowledgeStore

SEP = -1  # between documents: no n-gram or continuation crosses it


@dataclass
class NgramIndex:
    """Token documents and an index ``n-gram -> end positions`` (in insertion order).

    Documents added first are matched first (put answers of similar entities first).
    ``max_matches`` caps the positions kept per n-gram, which bounds the draft cost.
    """

    min_n: int = 2
    max_n: int = 4
    max_matches: int = 64
    tokens: list[int] = field(default_factory=list)
    doc_of: list[int] = field(default_factory=list)  # position -> document number
    doc_ids: list[str] = field(default_factory=list)
    _index: dict[tuple[int, ...], list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_n <= self.max_n:
            raise ConfigError(f"need 1 <= min_n <= max_n, got {self.min_n}, {self.max_n}")

    def __len__(self) -> int:
        return len(self.doc_ids)

    def add(self, tokens: Sequence[int], doc_id: str = "") -> None:
        """Append one document and index its n-grams."""
        doc = len(self.doc_ids)
        self.doc_ids.append(doc_id)
        start = len(self.tokens)
        self.tokens.extend(int(t) for t in tokens)
        self.tokens.append(SEP)
        self.doc_of.extend([doc] * (len(tokens) + 1))
        toks = self.tokens
        for end in range(start, len(toks) - 1):  # end: position of the n-gram's last token
            for n in range(self.min_n, self.max_n + 1):
                if end - n + 1 < start:
                    break
                key = tuple(toks[end - n + 1 : end + 1])
                hits = self._index.setdefault(key, [])
                if len(hits) < self.max_matches:
                    hits.append(end)

    def matches(self, context: Sequence[int], skip_doc: int | None = None) -> tuple[int, list[int]]:
        """``(n, end positions)`` of the longest suffix of ``context`` found (n = 0: none),
        ignoring positions in document ``skip_doc``."""
        for n in range(min(self.max_n, len(context)), self.min_n - 1, -1):
            hits = self._index.get(tuple(context[-n:]))
            if hits and skip_doc is not None:
                hits = [p for p in hits if self.doc_of[p] != skip_doc]
            if hits:
                return n, hits
        return 0, []

    def draft(
        self,
        context: Sequence[int],
        k: int,
        prefer: Mapping[int, int] | None = None,
        min_support: int = 1,
        min_share: float = 0.0,
        skip_doc: int | None = None,
    ) -> list[int]:
        """Up to ``k`` tokens that followed the longest matching suffix of ``context``
        (outside document ``skip_doc``).

        ``prefer`` (document number -> rank): when those documents match, the draft comes
        from them only (the best-ranked first); otherwise from every match. At each step
        the most common next token wins, ties going to the earliest match. Past the first
        token the draft stops where fewer than ``min_support`` matches, or less than
        ``min_share`` of the live ones, agree (a weak guess costs verification).
        """
        if k <= 0:
            return []
        hits = self._hits(context, prefer, skip_doc)
        if not hits:
            return []
        return continue_matches(self.tokens, hits, k, min_support, min_share)

    def draft_tree(
        self,
        context: Sequence[int],
        k: int,
        prefer: Mapping[int, int] | None = None,
        min_support: int = 1,
        skip_doc: int | None = None,
    ) -> DraftTree:
        """Up to ``k`` draft tokens as a tree: the ``k`` heaviest nodes of the trie of what
        followed the longest matching suffix of ``context`` (same ``prefer`` and
        ``skip_doc`` as :meth:`draft`). Where earlier answers went different ways, the tree
        keeps several of those ways, so one verification pass checks them all. A node below
        depth 1 needs ``min_support`` matches."""
        if k <= 0:
            return DraftTree()
        hits = self._hits(context, prefer, skip_doc)
        if not hits:
            return DraftTree()
        return continuation_tree(self.tokens, hits, k, min_support)

    def _hits(
        self, context: Sequence[int], prefer: Mapping[int, int] | None, skip_doc: int | None
    ) -> list[int]:
        """End positions a draft follows (only ``prefer``'s documents when they match)."""
        _, hits = self.matches(context, skip_doc)
        if prefer:
            preferred = [p for p in hits if self.doc_of[p] in prefer]
            if preferred:
                hits = sorted(preferred, key=lambda p: prefer[self.doc_of[p]])
        return hits


def continue_matches(
    tokens: Sequence[int],
    ends: Sequence[int],
    k: int,
    min_support: int = 1,
    min_share: float = 0.0,
) -> list[int]:
    """Majority walk over the continuations of ``ends`` in ``tokens`` (at most ``k``
    tokens); see :meth:`NgramIndex.draft`."""
    out: list[int] = []
    alive = list(ends)
    for step in range(1, k + 1):
        nexts = [(p, tokens[p + step]) for p in alive if p + step < len(tokens)]
        nexts = [(p, t) for p, t in nexts if t != SEP]
        if not nexts:
            break
        votes: dict[int, int] = {}
        for _, t in nexts:
            votes[t] = votes.get(t, 0) + 1
        best = max(votes, key=votes.__getitem__)  # first-seen wins a tie: earliest match
        support = votes[best]
        if out and (support < min_support or support < min_share * len(nexts)):
            break
        out.append(best)
        alive = [p for p, t in nexts if t == best]
    return out


def continuation_tree(
    tokens: Sequence[int], ends: Sequence[int], k: int, min_support: int = 1
) -> DraftTree:
    """The ``k`` heaviest nodes (ties: shallower, then earlier) of the trie of the
    continuations of ``ends`` in ``tokens``, each at most ``k`` deep; see
    :meth:`NgramIndex.draft_tree`. A node weighs the matches through it, so it never
    outweighs its parent, and the nodes kept form a tree."""
    node_of: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    trie_tokens: list[int] = []
    trie_parents: list[int] = []
    trie_depths: list[int] = []
    votes: list[int] = []
    for end in ends:
        parent = -1
        for depth in range(1, k + 1):
            at = end + depth
            if at >= len(tokens) or tokens[at] == SEP:
                break
            node = node_of.get((parent, tokens[at]))
            if node is None:
                node = node_of[(parent, tokens[at])] = len(trie_tokens)
                trie_tokens.append(tokens[at])
                trie_parents.append(parent)
                trie_depths.append(depth)
                votes.append(0)
            votes[node] += 1
            parent = node
    order = sorted(range(len(votes)), key=lambda i: (-votes[i], trie_depths[i], i))
    tree = DraftTree()
    kept: dict[int, int] = {-1: -1}  # trie node -> tree node
    for node in order:
        if len(tree) >= k:
            break
        strong = trie_depths[node] == 1 or votes[node] >= min_support
        if strong and trie_parents[node] in kept:
            kept[node] = tree.add(kept[trie_parents[node]], trie_tokens[node])
    return tree


class PoolRoute(NamedTuple):
    """Where one conversation's drafts come from (see :meth:`KnowledgePool.route`)."""

    index: NgramIndex | None
    prefer: dict[int, int] | None = None  # {own earlier answer's document: 0}, drafted first
    skip_doc: int | None = None  # the entity's own earlier answer, never drafted from


@dataclass
class KnowledgePool:
    """Earlier answers, tokenised, one :class:`NgramIndex` per (scenario, kind).

    ``prefix`` (e.g. the chat template's generation prompt tokens) is put before every
    answer so the first tokens of a new answer can be drafted too; ``eos`` is appended to
    answers that ended by themselves. The entity's own earlier answer (a refresh) is
    drafted from first whenever it matches; ``exclude_own``: never draft from it.
    """

    encode: Callable[[str], list[int]]
    prefix: Sequence[int] = ()
    eos: int | None = None
    min_n: int = 2
    max_n: int = 4
    max_matches: int = 64
    exclude_own: bool = False
    indexes: dict[tuple[str, str], NgramIndex] = field(default_factory=dict)
    _routes: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _doc_number: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    def add(
        self,
        scenario: str,
        kind: str,
        entity_id: str,
        answer: str,
        ended: bool,
    ) -> None:
        """Index one earlier answer (``ended``: the model stopped by itself)."""
        key = (scenario, kind)
        index = self.indexes.get(key)
        if index is None:
            index = NgramIndex(self.min_n, self.max_n, self.max_matches)
            self.indexes[key] = index
            self._doc_number[key] = {}
        tokens = [*self.prefix, *self.encode(answer)]
        if ended and self.eos is not None:
            tokens.append(self.eos)
        self._doc_number[key].setdefault(entity_id, len(index))
        index.add(tokens, entity_id)

    def add_store(
        self,
        store: KnowledgeStore,
        scenario: str | None = None,
        kind: str | None = None,
        model: str | None = None,
        exclude: Iterable[str] = (),
        limit: int | None = None,
    ) -> int:
        """Index the ``ok`` answers of ``store`` (minus entity ids in ``exclude``); count."""
        frame = store.answers(scenario=scenario, kind=kind, model=model)
        skip = set(exclude)
        added = 0
        for row in frame.iter_rows(named=True):
            if row["entity_id"] in skip:
                continue
            if limit is not None and added >= limit:
                break
            ended = row.get("finish_reason") in ("stop", "trimmed")
            self.add(row["scenario"], row["kind"], row["entity_id"], row["answer"], ended)
            added += 1
        return added

    def register(self, prompts: Iterable[PromptRecord]) -> None:
        """Remember which (scenario, kind, entity) each prompt's messages belong to."""
        for p in prompts:
            self._routes[p.prompt_hash] = (p.scenario, p.kind, p.entity_id)

    def route(self, messages: ChatMessages) -> PoolRoute:
        """Where a conversation's drafts come from: the index of its (scenario, kind) (None
        when that kind has no answers) and its own earlier answer to draft from first
        (unless ``exclude_own``: then the document never drafted from)."""
        route = self._routes.get(stable_hash([dict(m) for m in messages], length=32))
        if route is None:  # unregistered prompt: the only index, if there is just one
            only = next(iter(self.indexes.values())) if len(self.indexes) == 1 else None
            return PoolRoute(only)
        scenario, kind, entity_id = route
        index = self.indexes.get((scenario, kind))
        if index is None:
            return PoolRoute(None)
        numbers = self._doc_number[(scenario, kind)]
        own = numbers.get(entity_id)
        prefer = {own: 0} if own is not None and not self.exclude_own else None
        return PoolRoute(index, prefer, own if self.exclude_own else None)

    def __len__(self) -> int:
        return sum(len(i) for i in self.indexes.values())
