"""The transformers backend that decodes greedy requests speculatively: each step drafts
from the pool (:mod:`~kar.generation.speculative.drafts`) and checks the whole draft, a
chain or a tree, in one forward pass over the KV cache."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kar.errors import GenerationError
from kar.generation.backend import ChatMessages
from kar.generation.speculative.config import SpeculativeConfig, SpeculativeStats
from kar.generation.speculative.drafts import make_draft, make_draft_tree
from kar.generation.speculative.pool import KnowledgePool, PoolRoute
from kar.generation.speculative.tree import DraftTree
from kar.generation.transformers_backend import Dtype, TransformersBackend
from kar.records import GenerationOutput, SamplingParams

if TYPE_CHECKING:
    from kar.generation.store import KnowledgeStore
    from kar.project import GenerationSettings
    from kar.records import PromptRecord


class SpeculativeTransformersBackend(TransformersBackend):
    """:class:`TransformersBackend` that decodes greedy requests speculatively from ``pool``.

    Satisfies :class:`~kar.generation.backend.GenerationBackend`. In exact mode the
    ``model_name`` is the plain backend's (same output, same store key); in relaxed mode
    it gets :meth:`SpeculativeConfig.tag` appended. ``stats`` accumulates tokens/s, forward
    passes and the mean accepted draft length.
    """

    def __init__(
        self,
        pool: KnowledgePool | None = None,
        config: SpeculativeConfig | None = None,
        model: str | Path | None = None,
        dtype: Dtype = "bfloat16",
        threads: int = 1,
        device: str = "cpu",
        model_name: str | None = None,
        cpu_kernels: bool = True,
    ) -> None:
        super().__init__(
            model=model,
            dtype=dtype,
            threads=threads,
            device=device,
            model_name=model_name,
            cpu_kernels=cpu_kernels,
        )
        self.config = config or SpeculativeConfig()
        if self.config.mode == "relaxed":
            self.model_name += self.config.tag()
        self.pool = pool
        self.pool_limit: int | None = None  # most earlier answers index_store adds per kind
        self.stats = SpeculativeStats()
        self.prefix_tokens = generation_prompt_tokens(self.tokenizer)

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> SpeculativeTransformersBackend:
        """The backend ``generation.speculative.mode: exact | relaxed`` configures, with an
        empty pool (:meth:`index_store` fills it)."""
        backend = cls(
            config=SpeculativeConfig.from_settings(gen.speculative),
            model=gen.model,
            dtype=gen.dtype,
            threads=gen.threads,
            cpu_kernels=gen.cpu_kernels,
        )
        backend.pool = backend.make_pool(exclude_own=gen.speculative.exclude_own_answer)
        backend.pool_limit = gen.speculative.pool_limit
        return backend

    def index_store(self, store: KnowledgeStore | None, prompts: Sequence[PromptRecord]) -> None:
        """Draft from ``store``'s plain greedy answers of this model (the scenarios of
        ``prompts``, at most ``pool_limit`` per kind) and route ``prompts`` to them."""
        if self.pool is None:
            self.pool = self.make_pool()
        if store is not None:
            plain = self.model_name.removesuffix(self.config.tag())
            for scenario in {p.scenario for p in prompts} or {None}:
                self.pool.add_store(store, scenario=scenario, model=plain, limit=self.pool_limit)
        self.pool.register(prompts)

    def __repr__(self) -> str:
        return f"SpeculativeTransformersBackend({self.model_name!r}, mode={self.config.mode!r})"

    def make_pool(self, **kwargs: object) -> KnowledgePool:
        """An empty :class:`KnowledgePool` using this model's tokenizer, prefix and EOS."""
        cfg = self.config
        kwargs.setdefault("min_n", cfg.min_n)
        kwargs.setdefault("max_n", cfg.max_n)
        return KnowledgePool(
            encode=lambda text: self.tokenizer.encode(text, add_special_tokens=False),
            prefix=self.prefix_tokens,
            eos=min(self.eos_token_ids),
            **kwargs,  # type: ignore[arg-type]
        )

    def generate(self, batch: list[ChatMessages], params: SamplingParams) -> list[GenerationOutput]:
        if not batch:
            return []
        if not params.greedy or self.config.drafts_per_row(len(batch)) == 0:
            return super().generate(batch, params)
        started = time.perf_counter()
        try:
            outputs = self._speculate(batch, params)
        except RuntimeError as exc:
            raise GenerationError(
                f"{self.model_name}: speculative generation failed: {exc}"
            ) from exc
        self.stats.seconds += time.perf_counter() - started
        return outputs

    # -- decoding --------------------------------------------------------------------------

    def _speculate(
        self, batch: list[ChatMessages], params: SamplingParams
    ) -> list[GenerationOutput]:
        import torch
        from transformers import DynamicCache

        from kar.generation.cpu_kernels import CPU_GQA_ATTENTION

        cfg = self.config
        texts = [self.render(m) for m in batch]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        n_rows, prompt_len = ids.shape
        vocab = self.model.get_output_embeddings().out_features
        penalty = float(params.repetition_penalty)
        eos = self.eos_token_ids
        max_new = params.max_new_tokens

        routes = [self.pool.route(m) if self.pool is not None else PoolRoute(None) for m in batch]
        prompt_tokens = mask.sum(dim=1).tolist()
        # what each row has seen (HF's repetition penalty counts padding tokens too)
        seen = torch.zeros(n_rows, vocab, dtype=torch.bool, device=self.device)
        seen.scatter_(1, ids, True)
        contexts = [
            row[prompt_len - n :] for row, n in zip(ids.tolist(), prompt_tokens, strict=True)
        ]
        generated: list[list[int]] = [[] for _ in range(n_rows)]
        done = [False] * n_rows
        accepted_rows = [0] * n_rows
        steps_rows = [0] * n_rows
        stats = self.stats

        def penalise(logits: torch.Tensor, seen_mask: torch.Tensor) -> torch.Tensor:
            if penalty == 1.0:
                return logits
            return torch.where(
                seen_mask, torch.where(logits < 0, logits * penalty, logits / penalty), logits
            )

        def emit(r: int, tokens: list[int]) -> None:
            for t in tokens:
                generated[r].append(t)
                contexts[r].append(t)
                seen[r, t] = True
                if t in eos or len(generated[r]) >= max_new:
                    done[r] = True
                    break

        cache = DynamicCache(config=self.model.config)
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        prefill_started = time.perf_counter()
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            stats.forward_passes += 1
            logits = out.logits[:, -1].to(dtype=torch.float32)
            first = penalise(logits, seen).argmax(dim=-1).tolist()
            for r in range(n_rows):
                emit(r, [first[r]])
            stats.prefill_seconds += time.perf_counter() - prefill_started
            valid = mask.sum(dim=1)  # tokens in the cache per row that count
            full_mask = mask
            per_row = self.config.drafts_per_row(n_rows)
            pad = self.tokenizer.pad_token_id
            bool_mask = self.model.config._attn_implementation in ("sdpa", CPU_GQA_ATTENTION)
            while not all(done):
                last = [g[-1] for g in generated]
                trees: list[DraftTree] = []
                for r in range(n_rows):
                    room = min(per_row, max_new - len(generated[r]) - 1)
                    if done[r] or room <= 0:
                        trees.append(DraftTree())
                    elif cfg.draft_tree:
                        trees.append(make_draft_tree(contexts[r], routes[r], room, cfg))
                    else:
                        draft = make_draft(contexts[r], routes[r], room, cfg)
                        trees.append(DraftTree.chain(draft))
                width = 1 + max(len(t) for t in trees)
                step_ids = [
                    [last[r], *trees[r].tokens] + [pad] * (width - 1 - len(trees[r]))
                    for r in range(n_rows)
                ]
                depths = [[0, *t.depths()] + [0] * (width - 1 - len(t)) for t in trees]
                step_ids_t = torch.tensor(step_ids, device=self.device)
                step_pos = valid.unsqueeze(1) + torch.tensor(depths, device=self.device)
                step_mask = tree_attention_mask(full_mask, trees, width)
                if not bool_mask:  # eager attention adds the mask to its scores
                    dtype = self.model.dtype
                    step_mask = torch.zeros(
                        step_mask.shape, dtype=dtype, device=step_mask.device
                    ).masked_fill(~step_mask, torch.finfo(dtype).min)
                out = self.model(
                    input_ids=step_ids_t,
                    attention_mask=step_mask,
                    position_ids=step_pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                stats.forward_passes += 1
                logits = out.logits.to(dtype=torch.float32)  # (rows, width, vocab)
                kept: list[list[int]] = []  # per row: the step's columns that stay cached
                for r in range(n_rows):
                    if done[r]:
                        kept.append([])
                        continue
                    tree = trees[r]
                    m = len(tree)
                    seen_cols = seen[r].expand(m + 1, vocab).clone()
                    for node in range(m):  # a node's column has seen the tokens of its path
                        seen_cols[node + 1, [tree.tokens[n] for n in tree.path(node)]] = True
                    scores = penalise(logits[r, : m + 1], seen_cols)
                    best = scores.argmax(dim=-1).tolist()
                    near: list[dict[int, float]] = [{} for _ in range(m + 1)]
                    if cfg.mode == "relaxed" and m:
                        top = torch.topk(torch.softmax(scores, dim=-1), cfg.top_k, dim=-1)
                        for col, (ids_, probs) in enumerate(
                            zip(top.indices.tolist(), top.values.tolist(), strict=True)
                        ):
                            near[col] = {
                                t: q for t, q in zip(ids_, probs, strict=True) if q >= cfg.min_prob
                            }
                    path = accept_path(tree, best, near)
                    steps_rows[r] += 1
                    stats.drafted += m
                    accepted_rows[r] += len(path)
                    end_col = path[-1] + 1 if path else 0
                    emit(r, [*(tree.tokens[n] for n in path), best[end_col]])
                    kept.append([0, *(n + 1 for n in path)])
                    # the last token + the kept path are now cached
                keep_counts = [len(k) for k in kept]
                if any(k != list(range(len(k))) for k in kept):
                    compact_step_cache(cache, kept, width)
                new_cols = torch.tensor(
                    [[int(j < n) for j in range(width)] for n in keep_counts],
                    device=self.device,
                    dtype=mask.dtype,
                )
                full_mask = torch.cat([full_mask, new_cols], dim=1)
                valid = valid + torch.tensor(keep_counts, device=self.device, dtype=valid.dtype)
                crop = width - max(keep_counts)  # trailing columns no row needs
                if crop > 0:
                    cache.crop(-crop)
                    full_mask = full_mask[:, :-crop]

        results = []
        for r in range(n_rows):
            tokens = generated[r]
            stop = next((i for i, t in enumerate(tokens) if t in eos), None)
            body = tokens if stop is None else tokens[:stop]
            stats.row_steps += steps_rows[r]
            stats.accepted += accepted_rows[r]
            stats.new_tokens += len(tokens)
            results.append(
                GenerationOutput(
                    text=self.tokenizer.decode(body, skip_special_tokens=True).strip(),
                    prompt_tokens=int(prompt_tokens[r]),
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


def generation_prompt_tokens(tokenizer: Any) -> list[int]:
    """Tokens the chat template puts before an answer (e.g. ``<|im_start|>assistant\\n``)."""
    msgs = [{"role": "user", "content": "x"}]
    with_prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    suffix = with_prompt[len(without) :] if with_prompt.startswith(without) else ""
    return tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
