from dataclasses import dataclass

import pytest
import torch

from kvdirect_interp import (
    H2O,
    TOVA,
    KVDirect,
    SnapKV,
    SnapKVPerStep,
    StreamingLLM,
    WindowOnly,
    generate,
)
from kvdirect_interp.cost import Arch, forward_flops
from kvdirect_interp.memory import (
    Shape,
    kv_bytes_per_token,
    residual_bytes_per_token,
    sliding_windows,
)
from kvdirect_interp.policies import POLICIES, EvictionPolicy
from kvdirect_interp.policies.evict import EvictingLayer
from kvdirect_interp.policies.kvdirect import MODES
from kvdirect_interp.policies.registry import baselines
from tests.fixtures import random_tokens, tiny_model

LOGIT_TOL = 1e-4  # tiny random models: near-ties are common (see test_generation)
N_PROMPT, N_NEW, WINDOW = 20, 16, 6


def _agree_within_tolerance(ref, got):
    """Logits within LOGIT_TOL at every step, tokens equal wherever the top-2 margin of the
    reference exceeds twice that (up to the first near-tie)."""
    for step, (a, b) in enumerate(zip(ref.logits, got.logits, strict=True)):
        torch.testing.assert_close(b, a, rtol=0, atol=LOGIT_TOL)
        top2 = a.topk(2).values[0]
        if float(top2[0] - top2[1]) <= 2 * LOGIT_TOL:
            return
        assert ref.new_tokens[0, step] == got.new_tokens[0, step], step


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exact", [True, False])
def test_kvdirect_agrees_with_fullkv_greedy(tiny, mode, exact):
    prompt = random_tokens(1, N_PROMPT, seed=11)
    ref = generate(tiny, prompt, max_new_tokens=N_NEW, keep_logits=True)
    got = generate(
        tiny,
        prompt,
        max_new_tokens=N_NEW,
        keep_logits=True,
        cache=KVDirect(WINDOW, checkpoint=mode, exact_shapes=exact),
    )
    _agree_within_tolerance(ref, got)


@pytest.mark.parametrize("mode", MODES)
def test_exact_shape_rebuild_gives_bitwise_equal_logits(tiny, mode):
    # Rebuilding each token with the GEMM shape that first computed it repeats the cached
    # computation, so on this CPU the logits are the same bits (measured, per family).
    prompt = random_tokens(1, N_PROMPT, seed=12)
    ref = generate(tiny, prompt, max_new_tokens=N_NEW, keep_logits=True)
    got = generate(
        tiny,
        prompt,
        max_new_tokens=N_NEW,
        keep_logits=True,
        cache=KVDirect(WINDOW, checkpoint=mode),
    )
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, got.logits, strict=True))
    assert torch.equal(ref.tokens, got.tokens)


@pytest.mark.parametrize("mode", MODES)
def test_kvdirect_seeded_sampling_matches_fullkv(mode):
    model = tiny_model("tiny-qwen2")
    prompt = random_tokens(1, N_PROMPT, seed=13)
    kw = dict(max_new_tokens=N_NEW, do_sample=True, temperature=0.8, top_p=0.9, seed=7)
    ref = generate(model, prompt, **kw)
    got = generate(model, prompt, cache=KVDirect(WINDOW, checkpoint=mode), **kw)
    assert torch.equal(ref.tokens, got.tokens)


def test_kvdirect_bytes_match_the_shape_formulas():
    model = tiny_model("tiny-llama")  # no sliding layers: every token counts
    shape = Shape.of(model)
    n = N_PROMPT + N_NEW - 1
    held = lambda mode: generate(
        model,
        random_tokens(1, N_PROMPT, seed=14),
        max_new_tokens=N_NEW,
        cache=KVDirect(WINDOW, checkpoint=mode),
    ).memory[-1]
    full = generate(model, random_tokens(1, N_PROMPT, seed=14), max_new_tokens=N_NEW).memory[-1]
    assert full["tokens_seen"] == n  # every token fed but the last new one (picked only)
    assert full["kv_bytes"] == n * kv_bytes_per_token(shape)
    window_kv = WINDOW * kv_bytes_per_token(shape)
    every = held("every_layer")
    assert every["kv_bytes"] == window_kv
    # checkpoints for the evicted tokens, plus the window's own residuals (kept so that a
    # token can be checkpointed when it leaves the window)
    assert every["residual_bytes"] == n * residual_bytes_per_token(shape)
    first = held("first_layer")
    assert first["residual_bytes"] == n * residual_bytes_per_token(shape, 1)
    assert first["kv_bytes"] == window_kv
    ids = held("token_ids")
    assert (ids["token_ids_bytes"], ids["residual_bytes"]) == (4 * n, 0)
    assert ids["rebuilt_bytes"] > 0  # the re-prefill materialises every layer's K/V
    # tiny-llama: 2 kv heads x 16 = 32 per K, 64 for K+V = d_model: K/V kept (no compute)
    min_bytes = KVDirect(WINDOW, checkpoint="min_bytes").bytes_per_token(shape)
    assert min_bytes == {"kv": kv_bytes_per_token(shape)}
    assert held("min_bytes")["kv_bytes"] == n * min_bytes["kv"]


def test_min_bytes_keeps_residuals_where_they_are_smaller():
    model = tiny_model("tiny-gpt2")  # 4 heads x 16 = 64 per K, K+V 128 > d_model 64
    out = generate(
        model,
        random_tokens(1, N_PROMPT, seed=15),
        max_new_tokens=4,
        cache=KVDirect(WINDOW, checkpoint="min_bytes"),
    ).memory[-1]
    shape = Shape.of(model)
    assert out["kv_bytes"] == WINDOW * kv_bytes_per_token(shape)
    assert out["tokens_seen"] == N_PROMPT + 3  # the 4th new token is picked, not fed
    assert out["residual_bytes"] == (N_PROMPT + 3) * residual_bytes_per_token(shape)
    policy = KVDirect(WINDOW, checkpoint="min_bytes")
    assert policy.bytes_per_token(shape) == {"residual": residual_bytes_per_token(shape)}


# ---- every registered policy ----


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])  # no sliding layers
@pytest.mark.parametrize("name", list(POLICIES))
def test_held_bytes_grow_at_the_policys_stated_rate(model_name, name):
    """What a runner holds grows by `bytes_per_token` per token once past the budget, for
    every kind it reports (the policy's formula is the runner's behaviour)."""
    model = tiny_model(model_name)
    policy = POLICIES[name](4)
    assert policy.name == name
    memory = generate(model, random_tokens(1, 10, seed=19), max_new_tokens=6, cache=policy).memory
    rate = policy.bytes_per_token(Shape.of(model))
    first, last = memory[2], memory[-1]
    n = last["tokens_seen"] - first["tokens_seen"]
    kinds = {k.removesuffix("_bytes") for k in last if k.endswith("_bytes")} - {
        "rebuilt",
        "peak_rss",
        "cuda_max_allocated",
    }
    assert set(rate) <= kinds
    for kind in kinds:
        grown = last[f"{kind}_bytes"] - first[f"{kind}_bytes"]
        assert grown == n * rate.get(kind, 0), kind


# ---- eviction baselines ----

# every registered baseline at budget 8, plus settings the registry does not use
BASELINES = [
    *(make(8) for make in baselines().values()),
    StreamingLLM(8, sinks=2),
    H2O(8, recent=3),
    SnapKVPerStep(8, observation_window=3, kernel=3),
    SnapKV(8, observation_window=3, kernel=3, pooling="max"),
]


def test_the_baseline_list_covers_every_eviction_policy_class():
    ours = {
        c for c in EvictionPolicy.__subclasses__() if c.__module__.startswith("kvdirect_interp")
    }
    assert {type(p) for p in BASELINES} == ours


@pytest.mark.parametrize("policy", BASELINES, ids=repr)
def test_baselines_keep_exactly_the_budget(policy):
    model = tiny_model("tiny-llama")
    runner = policy.runner(model)
    runner.prefill(random_tokens(1, 5, seed=16))
    assert all(l.keys.shape[-2] == 5 for l in runner.layers)  # under budget: all kept
    for i in range(12):
        runner.step(torch.tensor([3 + i]))
        # SnapKV compresses prompts only: a 5-token prompt stays whole, decoding never evicts
        expect = 6 + i if policy.compress_once else min(6 + i, 8)
        for layer in runner.layers:
            assert layer.keys.shape[-2] == layer.values.shape[-2] == expect
            assert layer.positions.shape == (layer.keys.shape[1], expect)  # [kv_heads, n]
            for row in layer.positions:  # each KV head's kept positions
                assert row.tolist() == sorted(row.tolist())
                if not isinstance(policy, TOVA):  # TOVA may drop the newest token too
                    assert row.max() == runner.n_seen - 1
    if isinstance(policy, StreamingLLM):
        s = policy.sinks
        for row in (row for layer in runner.layers for row in layer.positions):
            assert row[:s].tolist() == list(range(s))  # sinks survive
            assert row[s:].tolist() == list(range(runner.n_seen - (8 - s), runner.n_seen))
    if isinstance(policy, WindowOnly):
        for row in runner.layers[0].positions:
            assert row.tolist() == list(range(runner.n_seen - 8, runner.n_seen))


def test_baselines_respect_a_prefill_longer_than_the_budget():
    model = tiny_model("tiny-gemma3")  # sliding layers (window 8) and a global layer
    runner = H2O(5, recent=2).runner(model)
    runner.prefill(random_tokens(1, 20, seed=17))
    windows = sliding_windows(model)
    for layer, w in zip(runner.layers, windows, strict=True):
        assert layer.keys.shape[-2] == 5
        if w is not None:  # nothing outside the sliding window is kept, in any head
            assert int(layer.positions.min()) > runner.n_seen - w


def _layer(policy, n: int) -> EvictingLayer:
    """A layer of one KV head holding n tokens: one selection group (scores [1, n], attention
    [1, q, kv], keep -> [1, budget]); per-head examples: test_per_head_baselines.py."""
    layer = EvictingLayer(0, policy, None)
    layer.append(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))
    return layer


def test_h2o_hand_example():
    policy = H2O(3, recent=1)
    layer = _layer(policy, 5)
    attention = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [0.5, 0.5, 0, 0, 0],
            [0.1, 0.1, 0.8, 0, 0],
            [0.2, 0.6, 0.1, 0.1, 0],
            [0.1, 0.1, 0.1, 0.1, 0.6],
        ],
        dtype=torch.float64,
    )
    policy.observe(layer, attention[None])  # received: [1.9, 1.3, 1.0, 0.2, 0.6]
    assert torch.allclose(
        layer.scores[0], torch.tensor([1.9, 1.3, 1.0, 0.2, 0.6], dtype=torch.float64)
    )
    assert sorted(policy.keep(layer)[0].tolist()) == [0, 1, 4]  # two heaviest + the last


def test_tova_hand_example():
    policy = TOVA(2)
    layer = _layer(policy, 4)
    policy.observe(
        layer, torch.tensor([[[0.9, 0.1, 0, 0], [0.1, 0.2, 0.3, 0.4]]], dtype=torch.float64)
    )
    assert sorted(policy.keep(layer)[0].tolist()) == [2, 3]  # only the newest query's row counts


def test_snapkv_per_step_hand_example():
    policy = SnapKVPerStep(3, observation_window=1, kernel=3)
    layer = _layer(policy, 6)
    row = torch.tensor([0, 0, 0, 0.9, 0.3, 0.1], dtype=torch.float64)
    policy.observe(layer, row[None, None])
    # pooled (width 3, edges averaged over the valid cells only)
    assert torch.allclose(
        layer.scores[0], torch.tensor([0, 0, 0.3, 0.4, 1.3 / 3, 0.2], dtype=torch.float64)
    )
    assert sorted(policy.keep(layer)[0].tolist()) == [3, 4, 5]  # window [5] + two best others


# the attention of the last two queries (positions 5 and 6) of a 7-token prompt
SNAPKV_WINDOW_ROWS = torch.tensor(
    [[0.3, 0.4, 0.0, 0.0, 0.1, 0.2, 0.0], [0.1, 0.0, 0.1, 0.5, 0.0, 0.2, 0.1]],
    dtype=torch.float64,
)


@pytest.mark.parametrize(
    "pooling, pooled, kept",
    [
        # votes of tokens 0-4 (the window 5, 6 is kept anyway): [.4, .4, .1, .5, .1]; "avg":
        # mean over 3 with the zero padding counted, [.8, .9, 1, .7, .6] / 3: token 3 has
        # the most votes but its neighbours few; 2 and 1 join the window
        ("avg", [0.8 / 3, 0.3, 1 / 3, 0.7 / 3, 0.2], [1, 2, 5, 6]),
        # "max" over 3 (padding never wins): three tie at .5, the earlier two are kept
        ("max", [0.4, 0.4, 0.5, 0.5, 0.5], [2, 3, 5, 6]),
    ],
)
def test_snapkv_hand_example(pooling, pooled, kept):
    """Compress-once: after a 7-token prompt the last 2 tokens (the observation window) and
    the 2 best pooled others are kept; a decoded token is then added, nothing evicted."""
    policy = SnapKV(4, observation_window=2, kernel=3, pooling=pooling)
    layer = _layer(policy, 7)  # one pass of 7 tokens: a prompt
    earlier = torch.ones(1, 5, 7, dtype=torch.float64)  # queries 0-4: outside the window
    policy.observe(layer, torch.cat([earlier, SNAPKV_WINDOW_ROWS[None]], dim=1))
    assert len(layer.recent_rows) == 2  # only the window's queries count
    got = policy.scores(layer)[0]
    torch.testing.assert_close(got[:5], torch.tensor(pooled, dtype=torch.float64))
    assert policy.protected(layer).tolist() == [5, 6]
    layer.after_forward()
    assert layer.positions.tolist() == [kept] and layer.recent_rows == []
    layer.append(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))  # a decode step
    layer.after_forward()
    assert layer.positions.tolist() == [[*kept, 7]]  # budget + 1: decoding keeps all


def test_snapkv_with_a_budget_within_the_window_keeps_the_prompts_last_tokens():
    """budget <= observation window (undefined in the authors' code): the last `budget`."""
    for policy in (SnapKV(3), SnapKV(3, observation_window=3, pooling="max")):
        layer = _layer(policy, 7)
        policy.observe(layer, torch.eye(7, dtype=torch.float64)[None])
        layer.after_forward()
        assert layer.positions.tolist() == [[4, 5, 6]]


def test_snapkv_compresses_the_prompt_once_then_grows_by_one_per_token():
    model = tiny_model("tiny-llama")  # 2 KV heads, no sliding layers
    prompt, new = random_tokens(1, 20, seed=21), 8
    for policy in (SnapKV(6, observation_window=2, kernel=3), SnapKV(6, pooling="max")):
        runner = policy.runner(model)
        runner.prefill(prompt)
        for layer in runner.layers:
            assert layer.positions.shape == (2, 6)  # the budget, in each KV head
            w = min(policy.observation_window, 6)
            assert (layer.positions[:, 6 - w :] == torch.arange(20 - w, 20)).all()  # window
            assert layer.scores.numel() == 0 and layer.recent_rows == []  # nothing kept
        kept = [layer.positions.clone() for layer in runner.layers]
        assert runner.hooks()  # a prompt's attention is read
        for i in range(new):
            runner.step(torch.tensor([3 + i]))
            assert runner.hooks() == []  # a decode step reads none (the fast path may run)
            for layer, before in zip(runner.layers, kept, strict=True):
                assert layer.keys.shape[-2] == layer.values.shape[-2] == 7 + i
                assert torch.equal(layer.positions[:, :6], before)  # the prompt's stay
                assert (layer.positions[:, 6:] == torch.arange(20, 21 + i)).all()
    # the default window (32) covers the budget: the prompt's last 6 tokens
    runner = SnapKV(6).runner(model)
    runner.prefill(prompt)
    assert all((l.positions == torch.arange(14, 20)).all() for l in runner.layers)


def test_snapkv_leaves_a_prompt_within_the_budget_whole():
    model = tiny_model("tiny-llama")
    runner = SnapKV(8, observation_window=2, kernel=3).runner(model)
    runner.prefill(random_tokens(1, 8, seed=22))  # exactly the budget: whole
    assert all((l.positions == torch.arange(8)).all() for l in runner.layers)
    for i in range(4):  # and decoding evicts nothing, past the budget too
        runner.step(torch.tensor([5 + i]))
        assert all((l.positions == torch.arange(9 + i)).all() for l in runner.layers)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-mistral"])
def test_snapkv_compresses_each_turn_of_a_chat(name):
    """Every chunk of 2+ tokens is a prompt: back to the budget after each turn, from the
    last queries of that turn; one token at a time, the cache grows. Sliding layers hold
    what they still see, as many tokens each (one mask serves them all)."""
    model = tiny_model(name)
    policy = SnapKV(6, observation_window=3, kernel=3)
    runner = policy.runner(model)
    toks = random_tokens(1, 60, seed=23)
    held, start = 0, 0
    for size in (20, 1, 1, 1, 14, 1, 2, 1, 12, 1):
        runner.forward(toks[:, start : start + size])
        start += size
        held = 6 if size > 1 and held + size > 6 else held + size
        counts = set()
        for layer in runner.layers:
            n = layer.keys.shape[-2]
            assert layer.positions.shape == (layer.keys.shape[1], n)
            if layer.sliding_window is None:
                assert n == held, (size, layer.layer)
            else:  # at most what the window still shows
                assert n <= min(held, layer.sliding_window - 1)
                assert int(layer.positions.min()) > start - layer.sliding_window
                counts.add(n)
            if size > 1 and layer.sliding_window is None:  # the turn's last 3 are kept
                w = min(3, size)
                assert (layer.positions[:, n - w :] == torch.arange(start - w, start)).all()
        assert len(counts) <= 1


def test_snapkv_in_a_session():
    from kvdirect_interp import Session

    model = tiny_model("tiny-llama")
    session = Session(model, SnapKV(8, observation_window=4, kernel=3))
    for text in ["Hello there, how are you today?", "What is two plus two, please?"]:
        session.say(text, max_new_tokens=4, stop_at_eos=False)
        # the turn (more than 8 tokens) compressed to 8, then the 4 new tokens fed
        assert session.runner.n_seen > 20
        assert {l.keys.shape[-2] for l in session.runner.layers} == {8 + 4}


def test_snapkv_cost_counts_the_decoded_tokens():
    arch = Arch.of(tiny_model("tiny-llama"))
    # 1,024-token prompt compressed to 64, then 10 tokens decoded: 74 keys + the new one
    assert SnapKV(64).step_flops(arch, 1034, prompt=1024) == forward_flops(arch, 1, 75)
    assert SnapKV(64).step_flops(arch, 1034) == forward_flops(arch, 1, 65)  # right after
    assert SnapKV(64).step_flops(arch, 40, prompt=30) == forward_flops(arch, 1, 41)  # whole
    assert SnapKVPerStep(64).step_flops(arch, 1034, prompt=1024) == forward_flops(arch, 1, 65)
    assert SnapKV(64).held_tokens(1034, 1024) == 74 and SnapKV(64).held_tokens(40, 30) == 40
    assert SnapKVPerStep(64).held_tokens(1034, 1024) == 64 == H2O(64).held_tokens(1034)
    with pytest.raises(ValueError, match="prompt must be in 0..seen = 0..10"):
        SnapKV(4).held_tokens(10, 11)
    shape = Shape.of(tiny_model("tiny-llama"))
    assert SnapKV(4).bytes_per_token(shape) == {"kv": kv_bytes_per_token(shape)}
    assert SnapKVPerStep(4, observation_window=2).bytes_per_token(shape) == {}


def test_streaming_llm_and_window_hand_examples():
    layer = _layer(StreamingLLM(4, sinks=2), 7)
    assert StreamingLLM(4, sinks=2).keep(layer).tolist() == [[0, 1, 5, 6]]
    assert WindowOnly(3).keep(_layer(WindowOnly(3), 7)).tolist() == [[4, 5, 6]]


def test_keep_is_the_protected_tokens_plus_the_top_scored_rest():
    policy = H2O(4, recent=2)  # protected: the last two held tokens
    layer = _layer(policy, 6)
    layer.scores = torch.tensor([[5, 1, 3, 9, 7, 0]], dtype=torch.float64)
    assert policy.protected(layer).tolist() == [4, 5]
    # the two best of tokens 0-3 (9 and 5); token 4's 7 and token 5's 0 do not compete
    assert policy.keep(layer).tolist() == [[3, 0, 4, 5]]
    layer.scores = torch.tensor([[2, 0, 2, 0, 9, 9]], dtype=torch.float64)
    assert policy.keep(layer).tolist() == [[0, 2, 4, 5]]  # a tie goes to the earlier token


@dataclass(frozen=True)
class _OddOnes(EvictionPolicy):
    """A made-up baseline: protects tokens `protect`, scores each token by its index."""

    protect: tuple[int, ...] = (1,)
    needs_attention = False

    def protected(self, layer):
        return torch.tensor(self.protect)

    def scores(self, layer):
        return torch.arange(layer.keys.shape[-2], dtype=torch.float64)


def test_a_baseline_supplies_only_its_protected_set_and_scores():
    layer = _layer(_OddOnes(3), 6)
    assert _OddOnes(3).keep(layer).tolist() == [[5, 4, 1]]
    runner = _OddOnes(3).runner(tiny_model("tiny-llama"))
    runner.prefill(random_tokens(1, 6, seed=20))
    assert all(row.tolist() == [1, 4, 5] for l in runner.layers for row in l.positions)
    with pytest.raises(RuntimeError, match="_OddOnes.protected returned 2 tokens for a budget"):
        _OddOnes(1, protect=(1, 2)).keep(layer)


# ---- bad input ----


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: KVDirect(0), "window must be an integer >= 1"),
        (lambda: KVDirect(4, checkpoint="every"), "unknown checkpoint mode 'every'.*every_layer"),
        (lambda: WindowOnly(0), "budget must be an integer >= 1"),
        (lambda: H2O(-3), "budget must be an integer >= 1"),
        (lambda: TOVA(2.5), "budget must be an integer >= 1"),
        (lambda: StreamingLLM(4, sinks=4), "sinks must be in 0..budget-1 = 0..3"),
        (lambda: H2O(4, recent=5), "recent must be in 0..budget = 0..4"),
        (
            lambda: SnapKVPerStep(4, observation_window=5),
            "observation_window must be in 1..budget",
        ),
        (lambda: SnapKVPerStep(8, observation_window=2, kernel=2), "kernel must be an odd integer"),
        (lambda: SnapKV(8, kernel=4), "kernel must be an odd integer"),
        (lambda: SnapKV(8, observation_window=0), "observation_window must be an integer >= 1"),
        (lambda: SnapKV(8, pooling="mean"), r"pooling must be one of \['avg', 'max'\], got 'mean'"),
        (lambda: SnapKV(8, pooling="maxpool"), r"pooling must be one of \['avg', 'max'\]"),
    ],
)
def test_bad_policy_settings(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_window_larger_than_the_context():
    model = tiny_model("tiny-llama")
    for policy in (KVDirect(3000), WindowOnly(3000)):
        with pytest.raises(ValueError, match="of 3000 tokens exceeds the model's context of 2048"):
            generate(model, "hi", max_new_tokens=2, cache=policy)


def test_policies_refuse_batches():
    with pytest.raises(ValueError, match="batch 1"):
        generate(
            tiny_model("tiny-llama"),
            random_tokens(2, 5, seed=0),
            max_new_tokens=2,
            cache=KVDirect(4),
        )


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-mistral", "tiny-llama"])
@pytest.mark.parametrize(
    "policy",
    [
        H2O(6, recent=2),
        TOVA(6),
        StreamingLLM(6, sinks=2),
        SnapKVPerStep(6, observation_window=2, kernel=3),
        SnapKV(6, observation_window=2, kernel=3),
    ],
    ids=lambda p: type(p).__name__,
)
def test_attention_sees_exactly_the_keys_the_model_allows(name, policy):
    """After scattered evictions, multi-token chunks on sliding-window layers must see no
    key outside the window (found by review: masks assume contiguous held keys), and each
    query head exactly the keys its KV head holds (tiny-llama: 2 KV heads, per-head H2O and
    SnapKV)."""
    model = tiny_model(name)
    runner = policy.runner(model)
    wrong = []

    def checker(layer):
        def check(pattern, hook):
            q = pattern.shape[2]
            qpos = torch.arange(layer.seen - q, layer.seen)[:, None]
            # per query head: the positions its KV head holds (query head i reads KV head
            # i // group, HF's repeat_kv layout) -> [heads, 1, kv]
            held = layer.positions.repeat_interleave(pattern.shape[1] // layer.keys.shape[1], 0)
            allowed = held[:, None, :] <= qpos
            if layer.sliding_window is not None:
                allowed &= held[:, None, :] > qpos - layer.sliding_window
            visible = pattern[0].abs() > 0
            wrong.append(int((visible != allowed).sum()))

        return check

    own_hooks = runner.hooks
    runner.hooks = lambda: (
        own_hooks() + [(f"blocks.{l.layer}.attn.hook_pattern", checker(l)) for l in runner.layers]
    )
    toks = random_tokens(1, 60, seed=18)
    start = 0
    for size in (20, 1, 1, 1, 14, 1, 12, 1):
        runner.forward(toks[:, start : start + size])
        start += size
    assert wrong and sum(wrong) == 0


def test_segments_find_the_pass_of_every_position():
    from kvdirect_interp.policies.kvdirect_window import Segments

    seg = Segments()
    for start, length in [(0, 5), (5, 1), (6, 1), (7, 3), (10, 1)]:
        seg.add(start, length)
    assert [seg.of(p) for p in (0, 4, 5, 6, 7, 9, 10)] == [
        (0, 5),
        (0, 5),
        (5, 1),
        (6, 1),
        (7, 3),
        (7, 3),
        (10, 1),
    ]
    for outside in (-1, 11):
        with pytest.raises(KeyError):
            seg.of(outside)
    with pytest.raises(ValueError, match="overlaps"):
        seg.add(10, 2)


def test_exact_kvdirect_in_a_chat_gives_fullkv_logits_bitwise():
    """Turns (multi-token passes) and decoded tokens (one-token passes) interleave in a
    chat: every evicted token is rebuilt with its own pass's shape, so each turn's tokens
    and last logits are FullKV's bits."""
    from kvdirect_interp import FullKV, Session

    model = tiny_model("tiny-llama")
    sessions = [Session(model, FullKV()), Session(model, KVDirect(4))]
    for text in ["Hello there!", "What is two plus two?", "Thanks, bye."]:
        a, b = (s.say(text, max_new_tokens=6, stop_at_eos=False) for s in sessions)
        assert torch.equal(a.new_tokens, b.new_tokens)
        assert torch.equal(sessions[0].logits, sessions[1].logits)  # the last step's
    assert sessions[1].runner.bytes_held()["residual"] > 0
