"""Speculative decoding from a knowledge pool: the n-gram index and, with the real
SmolLM2, exact mode reproducing plain greedy decoding token for token."""

from __future__ import annotations

import pytest

from kar.errors import ConfigError
from kar.generation import KnowledgeStore, generate_knowledge
from kar.generation.speculative import KnowledgePool, NgramIndex, SpeculativeConfig
from kar.generation.speculative.drafts import prompt_lookup_match
from kar.records import KIND_ITEM, KIND_USER, PromptRecord, SamplingParams


def test_draft_follows_the_most_common_continuation() -> None:
    index = NgramIndex(min_n=2, max_n=3)
    index.add([1, 2, 3, 4, 5], "a")
    index.add([1, 2, 3, 9, 9], "b")
    index.add([7, 2, 3, 4, 6], "c")
    # suffix (2, 3) matches all three; 4 follows twice, then 5 vs 6 tie -> earliest doc
    assert index.draft([8, 2, 3], k=4) == [4, 5]
    # the longest suffix wins: (1, 2, 3) only matches a and b
    assert index.matches([1, 2, 3])[0] == 3
    assert index.draft([1, 2, 3], k=1) in ([4], [9])
    assert index.draft([5, 5], k=3) == []  # no match
    # never crosses into the next document
    assert index.draft([4, 5], k=3) == []


def test_draft_stops_where_support_is_weak() -> None:
    index = NgramIndex(min_n=2, max_n=2)
    index.add([1, 2, 3, 4, 5], "a")
    index.add([1, 2, 3, 4, 6], "b")
    index.add([1, 2, 3, 7, 8], "c")
    assert index.draft([1, 2], k=4) == [3, 4, 5]
    assert index.draft([1, 2], k=4, min_support=2) == [3, 4]  # 5 vs 6: one answer each
    assert index.draft([1, 2], k=4, min_share=0.7) == [3]  # 4 has only 2 of 3 matches


def test_prefer_puts_the_preferred_documents_first() -> None:
    index = NgramIndex(min_n=2, max_n=2)
    index.add([1, 2, 3, 5], "a")
    index.add([1, 2, 3, 6], "b")
    index.add([1, 2, 4, 7], "c")
    assert index.draft([1, 2], k=2) == [3, 5]  # 5 vs 6: a tie goes to the earliest match
    assert index.draft([1, 2], k=1, prefer={2: 0}) == [4]  # only c, though outvoted
    assert index.draft([1, 2], k=2, prefer={5: 0}) == [3, 5]  # no match in doc 5: all


def test_pool_routes_by_prompt() -> None:
    pool = KnowledgePool(encode=lambda text: [ord(c) for c in text], prefix=[0], eos=1)
    pool.add("movies", KIND_ITEM, "i2", "abx", ended=True)
    pool.add("movies", KIND_ITEM, "i3", "aby", ended=False)
    pool.add("movies", KIND_USER, "u1", "zzz", ended=True)
    assert len(pool) == 3
    prompt = PromptRecord(
        "item", "i1", KIND_ITEM, "movies", "v1", ({"role": "user", "content": "q"},)
    )
    pool.register([prompt])
    route = pool.route(prompt.messages)
    index = route.index
    assert index is pool.indexes[("movies", KIND_ITEM)]
    assert route.prefer is None  # i1 has no earlier answer
    assert index.draft([0, ord("a"), ord("b")], k=2) == [ord("x"), 1]  # EOS after an ended answer
    assert route.skip_doc is None  # i1 has no earlier answer
    unknown = pool.route(({"role": "user", "content": "other"},)).index
    assert unknown is None  # two kinds indexed: an unregistered prompt gets no pool


def test_pool_own_earlier_answer_first_unless_excluded() -> None:
    """On a refresh the entity's own earlier answer is drafted from first, even against a
    majority of other answers; with ``exclude_own`` it is never drafted from."""
    prompt = PromptRecord(
        "item", "i2", KIND_ITEM, "movies", "v1", ({"role": "user", "content": "q"},)
    )
    drafts = {}
    for exclude in (False, True):
        pool = KnowledgePool(encode=lambda text: [ord(c) for c in text], exclude_own=exclude)
        pool.add("movies", KIND_ITEM, "i2", "abx", ended=False)  # i2's own earlier answer
        pool.add("movies", KIND_ITEM, "i3", "aby", ended=False)
        pool.add("movies", KIND_ITEM, "i4", "aby", ended=False)
        pool.add("movies", KIND_ITEM, "i5", "cdz", ended=False)
        pool.register([prompt])
        route = pool.route(prompt.messages)
        assert route.index is not None
        assert route.skip_doc == (0 if exclude else None)
        assert route.prefer == (None if exclude else {0: 0})
        drafts[exclude] = [
            route.index.draft([ord(a), ord(b)], k=1, prefer=route.prefer, skip_doc=route.skip_doc)
            for a, b in ("ab", "bx")
        ]
    assert drafts[False] == [[ord("x")], []]  # own answer beats the two "aby"
    assert drafts[True] == [[ord("y")], []]  # "bx" occurs only in the excluded answer
    assert pool.indexes[("movies", KIND_ITEM)].matches([ord("b"), ord("x")], skip_doc=0) == (0, [])


def test_prompt_lookup_match_and_config_validation() -> None:
    assert prompt_lookup_match([5, 6, 7, 1, 5, 6], 2, 4) == (2, 1)
    assert prompt_lookup_match([1, 2, 3], 2, 4) == (0, -1)
    with pytest.raises(ConfigError, match="mode"):
        SpeculativeConfig(mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="draft_tokens"):
        SpeculativeConfig(draft_tokens=0)
    with pytest.raises(ConfigError, match="min_prob"):
        SpeculativeConfig(min_prob=2.0)


def test_step_token_budget_shortens_then_disables_drafts() -> None:
    cfg = SpeculativeConfig(draft_tokens=8, step_token_budget=16)
    assert [cfg.drafts_per_row(rows) for rows in (1, 2, 4, 8, 9, 16)] == [8, 7, 3, 1, 0, 0]


# -- real SmolLM2 ------------------------------------------------------------------------

TITLES = [
    "Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "Casino (1995)", "Babe (1995)",
    "Sabrina (1995)", "GoldenEye (1995)", "Balto (1995)", "Nixon (1995)", "Othello (1995)",
]  # fmt: skip
SHORT = SamplingParams(max_new_tokens=20)


def item_prompt(n: int) -> PromptRecord:
    messages = (
        {"role": "system", "content": "You are a film expert. Answer in one short paragraph."},
        {
            "role": "user",
            "content": f"Movie: {TITLES[n]}. Describe its genre and what it is about.",
        },
    )
    return PromptRecord("item", str(n), KIND_ITEM, "movies", "v1", messages)


@pytest.fixture(scope="module")
def spec_backend():
    from kar.generation.speculative import SpeculativeTransformersBackend

    # float32: bf16 kernels round a many-token verification pass differently from a
    # one-token step, which flips rare near-ties (see docs/generation.md)
    backend = SpeculativeTransformersBackend(dtype="float32")
    pool = backend.make_pool()
    pool_prompts = [item_prompt(n) for n in range(6, 10)]
    plain = super(type(backend), backend).generate([p.messages for p in pool_prompts], SHORT)
    for p, out in zip(pool_prompts, plain, strict=True):
        pool.add(p.scenario, p.kind, p.entity_id, out.text, ended=out.finish_reason == "stop")
    backend.pool = pool
    return backend


def plain_token_ids(backend, batch, params: SamplingParams) -> list[list[int]]:
    """Plain greedy ``model.generate`` token ids (up to and including EOS)."""
    import torch

    texts = [backend.render(m) for m in batch]
    enc = backend.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = backend.model.generate(
            **enc, max_new_tokens=params.max_new_tokens, do_sample=False,
            repetition_penalty=params.repetition_penalty,
            pad_token_id=backend.tokenizer.pad_token_id, eos_token_id=sorted(backend.eos_token_ids),
        )  # fmt: skip
    rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        stop = next((i for i, t in enumerate(row) if t in backend.eos_token_ids), None)
        rows.append(row if stop is None else row[: stop + 1])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3, 6])
def test_exact_mode_is_token_identical_to_greedy(spec_backend, batch_size: int) -> None:
    prompts = [item_prompt(n) for n in range(6)]
    spec_backend.pool.register(prompts)
    before = spec_backend.stats.accepted
    for start in range(0, len(prompts), batch_size):
        batch = [p.messages for p in prompts[start : start + batch_size]]
        expected = plain_token_ids(spec_backend, batch, SHORT)
        outputs = spec_backend.generate(batch, SHORT)
        assert [o.meta["token_ids"] for o in outputs] == expected
    assert spec_backend.stats.accepted > before, "no draft token was ever accepted"
    assert spec_backend.stats.mean_accepted > 0


@pytest.mark.slow
def test_batch_beyond_the_budget_decodes_plainly(spec_backend) -> None:
    """A batch the step budget leaves no draft token goes to plain ``generate``: same
    answers, and no speculative pass is run."""
    prompts = [item_prompt(n) for n in range(6)]
    batch = [p.messages for p in prompts]
    config = spec_backend.config
    spec_backend.config = SpeculativeConfig(step_token_budget=8)  # 8 // 6 - 1 = 0 drafts
    try:
        passes = spec_backend.stats.forward_passes
        outputs = spec_backend.generate(batch, SHORT)
        assert spec_backend.stats.forward_passes == passes
    finally:
        spec_backend.config = config
    plain = super(type(spec_backend), spec_backend).generate(batch, SHORT)
    assert [o.text for o in outputs] == [o.text for o in plain]


@pytest.mark.slow
def test_relaxed_mode_runs_through_the_runner(spec_backend, tmp_path) -> None:
    from kar.generation.speculative import SpeculativeTransformersBackend

    relaxed = SpeculativeTransformersBackend(
        pool=spec_backend.pool, config=SpeculativeConfig(mode="relaxed", top_k=5, min_prob=0.05)
    )
    assert relaxed.model_name.endswith("+spec-relaxed(k=5,p=0.05)")
    assert spec_backend.model_name == "smollm2-135m-instruct@float32"  # exact keeps the key
    store = KnowledgeStore(f"sqlite:///{tmp_path / 'k.db'}")
    prompts = [item_prompt(n) for n in range(4)]
    relaxed.pool.register(prompts)
    report = generate_knowledge(prompts, relaxed, store, SHORT, batch_size=2, progress=False,
                                truncated="accept")  # fmt: skip
    assert report.llm_calls == 4
    # the draft counts are the speculative report's (the backend's stats), not the run's
    assert relaxed.stats.row_steps > 0 and relaxed.stats.accepted >= 0
    assert "mean accepted draft" in relaxed.stats.summary()
    assert "draft" not in report.summary()
    answers = store.answers(kind=KIND_ITEM)
    assert answers.height == 4 and set(answers["model"]) == {relaxed.model_name}
    assert relaxed.stats.new_tokens > 0 and relaxed.stats.forward_passes < relaxed.stats.new_tokens


@pytest.mark.slow
def test_relaxed_mode_keeps_every_token_exact_mode_keeps(spec_backend) -> None:
    """The greedy choice passes relaxed verification however flat the distribution: with
    ``min_prob=1`` nothing else can, so relaxed mode keeps exactly exact mode's tokens."""
    prompts = [item_prompt(n) for n in range(4)]
    spec_backend.pool.register(prompts)
    batch = [p.messages for p in prompts]
    config = spec_backend.config
    kept = {}
    try:
        for mode in ("exact", "relaxed"):
            spec_backend.config = SpeculativeConfig(mode=mode, top_k=2, min_prob=1.0)
            accepted = spec_backend.stats.accepted
            outputs = spec_backend.generate(batch, SHORT)
            kept[mode] = (spec_backend.stats.accepted - accepted,
                          [o.meta["token_ids"] for o in outputs])  # fmt: skip
    finally:
        spec_backend.config = config
    assert kept["exact"][0] > 0, "no draft token was accepted: the check would be empty"
    assert kept["relaxed"] == kept["exact"]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 2])
def test_exact_mode_through_a_tree_whose_right_way_is_not_the_first(
    spec_backend, batch_size: int
) -> None:
    """The pool holds each prompt's greedy answer and, outvoting it, copies that leave it
    a few tokens in: a one-draft chain follows the copies and loses the rest, a draft tree
    also holds the right way as a second branch. Both give the greedy tokens exactly; the
    tree keeps more draft tokens, which it can only do through a correct tree attention
    mask and cache compaction."""
    prompts = [item_prompt(n) for n in (2, 3)]
    batch = [p.messages for p in prompts]
    expected = plain_token_ids(spec_backend, batch, SHORT)
    pool = spec_backend.make_pool()
    for p, ids in zip(prompts, expected, strict=True):
        answer = ids[:-1] if ids[-1] in spec_backend.eos_token_ids else ids
        wrong = spec_backend.tokenizer.decode([*answer[:4], *answer[8:4:-1]])
        right = spec_backend.tokenizer.decode(answer)
        for copy in range(3):  # outvotes the right way
            pool.add("movies", KIND_ITEM, f"w{copy}-{p.entity_id}", wrong, ended=False)
        pool.add("movies", KIND_ITEM, f"r-{p.entity_id}", right, ended=False)
    pool.register(prompts)
    saved = spec_backend.pool, spec_backend.config
    accepted = {}
    try:
        spec_backend.pool = pool
        for tree in (False, True):
            spec_backend.config = SpeculativeConfig(
                draft_tree=tree,
                draft_tokens=12,
                prompt_lookup=False,
                min_support=1,
                step_token_budget=32,
            )
            before = spec_backend.stats.accepted
            for start in range(0, len(batch), batch_size):
                rows = batch[start : start + batch_size]
                outputs = spec_backend.generate(rows, SHORT)
                want = expected[start : start + batch_size]
                assert [o.meta["token_ids"] for o in outputs] == want
            accepted[tree] = spec_backend.stats.accepted - before
    finally:
        spec_backend.pool, spec_backend.config = saved
    assert accepted[True] > accepted[False] > 0


@pytest.mark.slow
def test_exact_tree_mode_on_eager_attention(spec_backend) -> None:
    """Eager attention adds its mask to the scores: the tree mask goes to it as an additive
    float mask (a boolean one would be added as 0/1), and exact mode still equals greedy."""
    prompts = [item_prompt(n) for n in range(2)]
    spec_backend.pool.register(prompts)
    batch = [p.messages for p in prompts]
    model = spec_backend.model
    attention = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
        expected = plain_token_ids(spec_backend, batch, SHORT)
        before = spec_backend.stats.accepted
        outputs = spec_backend.generate(batch, SHORT)
    finally:
        model.set_attn_implementation(attention)
    assert [o.meta["token_ids"] for o in outputs] == expected
    assert spec_backend.stats.accepted > before
