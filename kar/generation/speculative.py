"""Speculative decoding from a knowledge pool for the transformers backend (DARE-style).

Each step drafts up to ``draft_tokens`` tokens per conversation from earlier answers
(:class:`~kar.generation.draft_pool.KnowledgePool`) or from the conversation itself
(prompt lookup), and the model checks the whole draft in **one** forward pass over the
KV cache. ``mode="exact"``: a draft token is kept only while it equals the greedy choice,
so the output is the greedy output, token for token. ``mode="relaxed"``: a draft token is
kept when it is the greedy choice, or among the model's ``top_k`` choices with
probability >= ``min_prob`` (faster; the answer may differ, so the backend's
``model_name`` says so). Either way the token after the last kept draft token is the
model's greedy choice, so every step makes at least one token. Batches work: rows accept
different numbers of tokens; rejected draft slots stay in the cache, masked out, and the
common tail is cropped.

Sampled requests (``temperature > 0``) fall back to plain ``generate``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kar.errors import ConfigError, GenerationError
from kar.generation.backend import ChatMessages
from kar.generation.draft_pool import DraftTree, KnowledgePool, PoolRoute
from kar.generation.transformers_backend import Dtype, TransformersBackend
from kar.records import GenerationOutput, SamplingParams

Mode = Literal["exact", "relaxed"]


@dataclass(frozen=True)
class SpeculativeConfig:
    """How drafts are made and accepted."""

    mode: Mode = "exact"
    # most draft tokens checked per step (with draft_tree: nodes). 5 makes the widest pass
    # 6 tokens: on this CPU (float32, kar's kernels) passes of 4-6 tokens cost ~0.9x a
    # one-token step and 7 or more ~1.1-1.5x, so a sixth node costs more than it keeps
    draft_tokens: int = 5
    top_k: int = 3  # relaxed: besides the greedy choice, a draft token among the top_k ...
    min_prob: float = 0.1  # ... with at least this probability is kept
    prompt_lookup: bool = True  # also draft from the conversation's own prompt/answer
    # draft_tokens may go to several continuations at once (a tree, checked in one pass
    # with a tree attention mask) where earlier answers went different ways
    draft_tree: bool = True
    # tokens (rows x (1 + draft)) one verification pass may hold: big batches get shorter
    # drafts, since a wide pass over many rows costs more than the tokens it saves; a batch
    # the budget leaves no draft token (rows > budget / 2) is decoded plainly (like vLLM's
    # disable_by_batch_size). 16 suits a CPU, where a 16-token pass is compute-bound
    step_token_budget: int = 16
    # past its first token a draft (or tree node) needs this many earlier answers to agree
    # (2 suited PyTorch's default kernels, where a wider pass cost ~1.5-2x a step)
    min_support: int = 1
    min_share: float = 0.5  # chain drafts: stop where less than this share of matches agree
    # no pool draft unless this many earlier answers agree on its first token: where a
    # verification pass costs much more than a one-token step (float32 on a CPU with
    # PyTorch's default kernels: ~1.9x; ~1.05x with kar.generation.cpu_kernels)
    # a weak draft loses more than it saves
    min_first_support: int = 1
    min_n: int = 2  # shortest suffix (tokens) matched for a draft
    max_n: int = 4  # longest suffix tried first

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "relaxed"):
            raise ConfigError(f"speculative mode must be 'exact' or 'relaxed', got {self.mode!r}")
        if self.step_token_budget < 1:
            raise ConfigError(f"step_token_budget must be >= 1, got {self.step_token_budget}")
        if self.draft_tokens < 1:
            raise ConfigError(f"draft_tokens must be >= 1, got {self.draft_tokens}")
        if self.top_k < 1 or not 0.0 <= self.min_prob <= 1.0:
            raise ConfigError(
                f"need top_k >= 1 and 0 <= min_prob <= 1, got {self.top_k}, {self.min_prob}"
            )
        if self.min_support < 1 or self.min_first_support < 1:
            raise ConfigError(
                f"need min_support >= 1 and min_first_support >= 1, got {self.min_support}, "
                f"{self.min_first_support}"
            )
        if not 1 <= self.min_n <= self.max_n:
            raise ConfigError(f"need 1 <= min_n <= max_n, got {self.min_n}, {self.max_n}")

    def drafts_per_row(self, rows: int) -> int:
        """Most draft tokens per row in a batch of ``rows`` (0: the batch decodes plainly)."""
        return min(self.draft_tokens, max(0, self.step_token_budget // rows - 1))

    def tag(self) -> str:
        """Suffix of ``model_name`` for relaxed mode (its output differs from greedy)."""
        return f"+spec-relaxed(k={self.top_k},p={self.min_prob:g})"


@dataclass
class SpeculativeStats:
    """Running totals over every ``generate`` call of a backend."""

    forward_passes: int = 0  # model calls (prefill + verification steps), batch-level
    row_steps: int = 0  # verification steps summed over rows
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens kept
    new_tokens: int = 0  # tokens generated (EOS included)
    seconds: float = 0.0
    prefill_seconds: float = 0.0  # of ``seconds``: the prompts' passes (no draft can help)
    per_call: list[dict[str, float]] = field(default_factory=list)

    @property
    def mean_accepted(self) -> float:
        """Mean number of draft tokens kept per verification step (per row)."""
        return self.accepted / self.row_steps if self.row_steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        rate = self.accepted / self.drafted if self.drafted else 0.0
        return (
            f"{self.new_tokens} tokens in {self.seconds:.1f}s ({self.tokens_per_s:.1f} tok/s), "
            f"{self.forward_passes} forward passes, mean accepted draft {self.mean_accepted:.2f} "
            f"tokens/step, acceptance {rate:.0%}"
        )


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
        self.stats = SpeculativeStats()
        self.prefix_tokens = generation_prompt_tokens(self.tokenizer)

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
                    meta={
                        "token_ids": tokens,
                        "spec_steps": steps_rows[r],
                        "spec_accepted": accepted_rows[r],
                    },
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


def make_draft(
    context: list[int], route: PoolRoute, k: int, config: SpeculativeConfig
) -> list[int]:
    """Up to ``k`` draft tokens after ``context``: from the conversation itself (prompt
    lookup) when its match is longer, else from the pool ``route`` points to."""
    index = route.index
    pool_n, _ = index.matches(context, route.skip_doc) if index is not None else (0, [])
    own_n, own_end = (
        _own_match(context, config.min_n, config.max_n) if config.prompt_lookup else (0, -1)
    )
    if own_n > pool_n:
        return context[own_end + 1 : own_end + 1 + k]
    if pool_n and index is not None:
        return index.draft(
            context,
            k,
            route.prefer,
            config.min_support,
            config.min_share,
            route.skip_doc,
            route.weights,
            config.min_first_support,
        )
    return []


def make_draft_tree(
    context: list[int], route: PoolRoute, k: int, config: SpeculativeConfig
) -> DraftTree:
    """Up to ``k`` draft tokens after ``context`` as a tree (``config.draft_tree``): the
    heaviest continuations in the pool ``route`` points to, merged with the conversation's
    own continuation (prompt lookup), the longer match's nodes first."""
    index = route.index
    pool_n, _ = index.matches(context, route.skip_doc) if index is not None else (0, [])
    own_n, own_end = (
        _own_match(context, config.min_n, config.max_n) if config.prompt_lookup else (0, -1)
    )
    own = DraftTree.chain(context[own_end + 1 : own_end + 1 + k]) if own_n else DraftTree()
    pool = DraftTree()
    if pool_n and index is not None:
        pool = index.draft_tree(
            context,
            k,
            route.prefer,
            config.min_support,
            route.skip_doc,
            route.weights,
            config.min_first_support,
        )
    first, second = (own, pool) if own_n > pool_n else (pool, own)
    return first.merge(second, k)


def _own_match(context: list[int], min_n: int, max_n: int) -> tuple[int, int]:
    """Longest suffix (``min_n..max_n`` tokens) of ``context`` seen earlier in it:
    ``(n, end position of the latest earlier occurrence)``, or ``(0, -1)``."""
    size = len(context)
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        tail = context[size - n :]
        first = tail[0]
        for end in range(size - 2, n - 2, -1):
            if (
                context[end] == tail[-1]
                and context[end - n + 1] == first
                and context[end - n + 1 : end + 1] == tail
            ):
                return n, end
    return 0, -1
