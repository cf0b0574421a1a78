"""One batch's speculative decoding (:class:`SpeculativeDecode`): the prompts' prefill,
then steps that draft a tree per row, check every draft in one forward pass over the KV
cache (:func:`tree_attention_mask`), keep each row's accepted path (:func:`accept_path`)
and compact the cache to it (:func:`compact_step_cache`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kar.generation.speculative.drafts import make_draft, make_draft_tree
from kar.generation.speculative.pool import PoolRoute
from kar.generation.speculative.tree import DraftTree
from kar.records import GenerationOutput

if TYPE_CHECKING:
    import torch

    from kar.generation.backend import ChatMessages
    from kar.generation.speculative.backend import SpeculativeTransformersBackend
    from kar.records import SamplingParams


class SpeculativeDecode:
    """The state of one greedy batch decoded speculatively by ``backend``: per row the
    tokens generated, the context drafts continue, the tokens seen (repetition penalty),
    and the KV cache's valid columns. :meth:`run` returns one output per conversation and
    adds to ``backend.stats``."""

    def __init__(
        self,
        backend: SpeculativeTransformersBackend,
        batch: list[ChatMessages],
        params: SamplingParams,
    ) -> None:
        import torch

        from kar.generation.cpu_kernels import CPU_GQA_ATTENTION

        self.backend = backend
        self.cfg = backend.config
        self.stats = backend.stats
        texts = [backend.render(m) for m in batch]
        enc = backend.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        self.ids = enc["input_ids"].to(backend.device)
        self.mask = enc["attention_mask"].to(backend.device)
        self.n_rows, prompt_len = self.ids.shape
        self.vocab = backend.model.get_output_embeddings().out_features
        self.penalty = float(params.repetition_penalty)
        self.eos = backend.eos_token_ids
        self.max_new = params.max_new_tokens
        pool = backend.pool
        self.routes = [pool.route(m) if pool is not None else PoolRoute(None) for m in batch]
        self.prompt_tokens = self.mask.sum(dim=1).tolist()
        # what each row has seen (HF's repetition penalty counts padding tokens too)
        self.seen = torch.zeros(self.n_rows, self.vocab, dtype=torch.bool, device=backend.device)
        self.seen.scatter_(1, self.ids, True)
        self.contexts = [
            row[prompt_len - n :]
            for row, n in zip(self.ids.tolist(), self.prompt_tokens, strict=True)
        ]
        self.generated: list[list[int]] = [[] for _ in range(self.n_rows)]
        self.done = [False] * self.n_rows
        self.accepted_rows = [0] * self.n_rows
        self.steps_rows = [0] * self.n_rows
        self.per_row = self.cfg.drafts_per_row(self.n_rows)
        self.pad = backend.tokenizer.pad_token_id
        attention = backend.model.config._attn_implementation
        self.bool_mask = attention in ("sdpa", CPU_GQA_ATTENTION)
        self.cache: Any = None
        self.valid: Any = None  # tokens in the cache per row that count
        self.full_mask: Any = None  # which cached columns each row sees

    def run(self) -> list[GenerationOutput]:
        """Prefill, then verification steps until every row is done."""
        import torch
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.backend.model.config)
        mask = self.mask
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        prefill_started = time.perf_counter()
        with torch.inference_mode():
            self.prefill(positions, prefill_started)
            while not all(self.done):
                self.step()
        return self.outputs()

    def penalise(self, logits: torch.Tensor, seen_mask: torch.Tensor) -> torch.Tensor:
        """HF's repetition penalty on the tokens ``seen_mask`` marks."""
        import torch

        if self.penalty == 1.0:
            return logits
        penalty = self.penalty
        return torch.where(
            seen_mask, torch.where(logits < 0, logits * penalty, logits / penalty), logits
        )

    def emit(self, r: int, tokens: list[int]) -> None:
        """Append ``tokens`` to row ``r`` up to its EOS or ``max_new_tokens``."""
        for t in tokens:
            self.generated[r].append(t)
            self.contexts[r].append(t)
            self.seen[r, t] = True
            if t in self.eos or len(self.generated[r]) >= self.max_new:
                self.done[r] = True
                break

    def prefill(self, positions: torch.Tensor, started: float) -> None:
        """The prompts' pass: fills the cache and makes each row's first token."""
        import torch

        out = self.backend.model(
            input_ids=self.ids,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.forward_passes += 1
        logits = out.logits[:, -1].to(dtype=torch.float32)
        first = self.penalise(logits, self.seen).argmax(dim=-1).tolist()
        for r in range(self.n_rows):
            self.emit(r, [first[r]])
        self.stats.prefill_seconds += time.perf_counter() - started
        self.valid = self.mask.sum(dim=1)
        self.full_mask = self.mask

    def step(self) -> None:
        """One verification step: draft, check every draft in one pass, keep what holds."""
        trees = self.draft_trees()
        width = 1 + max(len(t) for t in trees)
        logits = self.verify(trees, width)  # (rows, width, vocab)
        kept = [self.accept(r, trees[r], logits) for r in range(self.n_rows)]
        self.advance(kept, width)

    def draft_trees(self) -> list[DraftTree]:
        """Each row's draft (a tree, or a chain), as long as its room allows; empty for a
        row that is done."""
        cfg = self.cfg
        trees: list[DraftTree] = []
        for r in range(self.n_rows):
            room = min(self.per_row, self.max_new - len(self.generated[r]) - 1)
            if self.done[r] or room <= 0:
                trees.append(DraftTree())
            elif cfg.draft_tree:
                trees.append(make_draft_tree(self.contexts[r], self.routes[r], room, cfg))
            else:
                draft = make_draft(self.contexts[r], self.routes[r], room, cfg)
                trees.append(DraftTree.chain(draft))
        return trees

    def verify(self, trees: list[DraftTree], width: int) -> torch.Tensor:
        """The forward pass over each row's last token and draft tree (float32 logits)."""
        import torch

        backend, device = self.backend, self.backend.device
        last = [g[-1] for g in self.generated]
        step_ids = [
            [last[r], *trees[r].tokens] + [self.pad] * (width - 1 - len(trees[r]))
            for r in range(self.n_rows)
        ]
        depths = [[0, *t.depths()] + [0] * (width - 1 - len(t)) for t in trees]
        step_ids_t = torch.tensor(step_ids, device=device)
        step_pos = self.valid.unsqueeze(1) + torch.tensor(depths, device=device)
        step_mask = tree_attention_mask(self.full_mask, trees, width)
        if not self.bool_mask:  # eager attention adds the mask to its scores
            dtype = backend.model.dtype
            step_mask = torch.zeros(
                step_mask.shape, dtype=dtype, device=step_mask.device
            ).masked_fill(~step_mask, torch.finfo(dtype).min)
        out = backend.model(
            input_ids=step_ids_t,
            attention_mask=step_mask,
            position_ids=step_pos,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.stats.forward_passes += 1
        return out.logits.to(dtype=torch.float32)

    def accept(self, r: int, tree: DraftTree, logits: torch.Tensor) -> list[int]:
        """Row ``r``'s accepted path plus the model's next token, emitted; returns the
        step's columns that stay cached (the last token + the kept path)."""
        if self.done[r]:
            return []
        m = len(tree)
        seen_cols = self.seen[r].expand(m + 1, self.vocab).clone()
        for node in range(m):  # a node's column has seen the tokens of its path
            seen_cols[node + 1, [tree.tokens[n] for n in tree.path(node)]] = True
        scores = self.penalise(logits[r, : m + 1], seen_cols)
        best = scores.argmax(dim=-1).tolist()
        path = accept_path(tree, best, self.near_tokens(scores, m))
        self.steps_rows[r] += 1
        self.stats.drafted += m
        self.accepted_rows[r] += len(path)
        end_col = path[-1] + 1 if path else 0
        self.emit(r, [*(tree.tokens[n] for n in path), best[end_col]])
        return [0, *(n + 1 for n in path)]

    def near_tokens(self, scores: torch.Tensor, m: int) -> list[dict[int, float]]:
        """Relaxed mode: per column, the top-k tokens with at least ``min_prob``
        (token -> probability); empty dicts in exact mode."""
        import torch

        cfg = self.cfg
        near: list[dict[int, float]] = [{} for _ in range(m + 1)]
        if cfg.mode == "relaxed" and m:
            top = torch.topk(torch.softmax(scores, dim=-1), cfg.top_k, dim=-1)
            for col, (ids_, probs) in enumerate(
                zip(top.indices.tolist(), top.values.tolist(), strict=True)
            ):
                near[col] = {t: q for t, q in zip(ids_, probs, strict=True) if q >= cfg.min_prob}
        return near

    def advance(self, kept: list[list[int]], width: int) -> None:
        """Keep each row's accepted columns of the step in the cache (moved to the front),
        extend the mask and the valid counts, and crop columns no row needs."""
        import torch

        device = self.backend.device
        keep_counts = [len(k) for k in kept]
        if any(k != list(range(len(k))) for k in kept):
            compact_step_cache(self.cache, kept, width)
        new_cols = torch.tensor(
            [[int(j < n) for j in range(width)] for n in keep_counts],
            device=device,
            dtype=self.mask.dtype,
        )
        self.full_mask = torch.cat([self.full_mask, new_cols], dim=1)
        self.valid = self.valid + torch.tensor(keep_counts, device=device, dtype=self.valid.dtype)
        crop = width - max(keep_counts)  # trailing columns no row needs
        if crop > 0:
            self.cache.crop(-crop)
            self.full_mask = self.full_mask[:, :-crop]

    def outputs(self) -> list[GenerationOutput]:
        """One output per row (text up to EOS), adding the rows' counts to the stats."""
        results = []
        for r in range(self.n_rows):
            tokens = self.generated[r]
            stop = next((i for i, t in enumerate(tokens) if t in self.eos), None)
            body = tokens if stop is None else tokens[:stop]
            self.stats.row_steps += self.steps_rows[r]
            self.stats.accepted += self.accepted_rows[r]
            self.stats.new_tokens += len(tokens)
            results.append(
                GenerationOutput(
                    text=self.backend.tokenizer.decode(body, skip_special_tokens=True).strip(),
                    prompt_tokens=int(self.prompt_tokens[r]),
                    completion_tokens=len(body) + (stop is not None),
                    finish_reason="stop" if stop is not None else "length",
                    meta={"token_ids": tokens},
                )
            )
        return results


def tree_attention_mask(past: Any, trees: list[DraftTree], width: int) -> Any:
    """Boolean mask (rows, 1, width, past + width) of a verification pass: each column sees
    the cached tokens ``past`` (rows, past) marks, the last generated token (column 0),
    the tree nodes on its own path and itself; padding columns see only themselves."""
    import torch

    rows, past_len = past.shape
    new = torch.zeros(rows, width, width, dtype=torch.bool, device=past.device)
    new[:, range(width), range(width)] = True
    for r, tree in enumerate(trees):
        new[r, : len(tree) + 1, 0] = True
        for node in range(len(tree)):
            new[r, node + 1, [n + 1 for n in tree.path(node)]] = True
    seen = past.to(dtype=torch.bool).unsqueeze(1).expand(rows, width, past_len)
    return torch.cat([seen, new], dim=2).unsqueeze(1)


def accept_path(
    tree: DraftTree, best: list[int], near: list[dict[int, float]] | None = None
) -> list[int]:
    """The nodes kept from ``tree``: from the root, the child that is the greedy choice
    ``best[column]`` of its parent's column (column = node + 1; the root's is 0); in relaxed
    mode, failing that, the likeliest child in ``near[column]`` (token -> probability of the
    tokens close enough to the top)."""
    children = tree.children()
    path: list[int] = []
    node = -1
    while children[node]:
        col = node + 1
        nxt = next((c for c in children[node] if tree.tokens[c] == best[col]), None)
        if nxt is None and near and near[col]:
            close = [c for c in children[node] if tree.tokens[c] in near[col]]
            nxt = max(close, key=lambda c: near[col][tree.tokens[c]], default=None)
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    return path


def compact_step_cache(cache: Any, kept: list[list[int]], width: int) -> None:
    """Move each row's kept columns of the last ``width`` cached positions to the front of
    them, in order (the rest follow, to be masked or cropped)."""
    import torch

    order = [k + [c for c in range(width) if c not in k] for k in kept]
    layers = cache.layers
    index = torch.tensor(order, device=layers[0].keys.device)
    for layer in layers:
        for name in ("keys", "values"):
            states = getattr(layer, name)
            tail = states[:, :, -width:]
            idx = index[:, None, :, None].expand(-1, tail.shape[1], -1, tail.shape[3])
            states[:, :, -width:] = tail.gather(2, idx)
