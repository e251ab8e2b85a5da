"""Bytes per token: each policy states its own; memory.py keeps the shape formulas."""

import itertools

import pytest

from kvdirect_interp import H2O, FullKV, KVDirect, NoCache, SnapKV, SnapKVPerStep, generate
from kvdirect_interp.generation import held_bytes as measured
from kvdirect_interp.memory import (
    GEMMA3_4B,
    Shape,
    held_after,
    kv_bytes_per_token,
    residual_bytes_per_token,
)
from kvdirect_interp.policies import POLICIES, EvictionPolicy
from kvdirect_interp.policies.registry import kvdirect_modes
from kvdirect_interp.policies.storage import bytes_per_token_table
from tests.fixtures import random_tokens, tiny_model

SMOLLM2 = Shape(
    "SmolLM2-135M", n_layers=30, d_model=576, n_kv_heads=3, d_head=64, bytes_per_element=4
)
GEMMA3_270M = Shape(
    "Gemma 3 270M", n_layers=18, d_model=640, n_kv_heads=1, d_head=256, bytes_per_element=4
)
WIDE_KV = Shape(
    "tiny-gpt2", n_layers=3, d_model=64, n_kv_heads=4, d_head=16, bytes_per_element=4
)  # K+V (128) wider than d_model: min_bytes keeps residuals
TIE = Shape("tie", n_layers=2, d_model=64, n_kv_heads=2, d_head=16, bytes_per_element=2)
SHAPES = [GEMMA3_4B, SMOLLM2, GEMMA3_270M, WIDE_KV, TIE]


def _old_table_rows(s: Shape) -> dict[str, int]:
    """bytes_per_token_table's numbers before policies owned them (the reference)."""
    kv = 2 * s.n_layers * s.n_kv_heads * s.d_head * s.bytes_per_element
    return {
        "K/V (standard cache)": kv,
        "every_layer (resid_pre x L)": s.n_layers * s.d_model * s.bytes_per_element,
        "min_bytes (per layer min)": s.n_layers
        * min(2 * s.n_kv_heads * s.d_head, s.d_model)
        * s.bytes_per_element,
        "first_layer (one residual)": s.d_model * s.bytes_per_element,
        "token_ids": 4,
    }


def test_gemma3_4b_numbers_from_the_paper():
    # 136 KB of K/V per token; "5 KB/token" for one residual
    assert FullKV().bytes_per_token(GEMMA3_4B) == {"kv": 139_264}
    assert KVDirect(8).bytes_per_token(GEMMA3_4B) == {"residual": 174_080}
    assert KVDirect(8, checkpoint="first_layer").bytes_per_token(GEMMA3_4B) == {"residual": 5_120}
    assert KVDirect(8, checkpoint="token_ids").bytes_per_token(GEMMA3_4B) == {"token_ids": 4}
    # 2 x 4 x 256 = 2048 <= 2560: K/V are the smaller, min_bytes is the full cache
    assert KVDirect(8, checkpoint="min_bytes").bytes_per_token(GEMMA3_4B) == {"kv": 139_264}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_the_table_keeps_its_old_numbers(shape):
    table = bytes_per_token_table([shape])
    old = _old_table_rows(shape)
    assert table.storage.tolist() == list(old)
    assert table.bytes_per_token.tolist() == list(old.values())
    assert table.vs_kv.tolist() == [b / old["K/V (standard cache)"] for b in old.values()]
    assert (table.model == shape.name).all()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_min_bytes_takes_the_smaller_per_layer(shape):
    got = KVDirect(4, checkpoint="min_bytes").bytes_per_token(shape)
    kv_smaller = 2 * shape.n_kv_heads * shape.d_head <= shape.d_model  # ties: keep K/V
    assert got == (
        {"kv": kv_bytes_per_token(shape)}
        if kv_smaller
        else {"residual": residual_bytes_per_token(shape)}
    )
    assert sum(got.values()) == _old_table_rows(shape)["min_bytes (per layer min)"]


def test_the_min_bytes_rule_has_one_home():
    policy = KVDirect(4, checkpoint="min_bytes")
    assert policy.keeps_kv(n_kv_heads=2, d_head=16, d_model=64)  # a tie keeps K/V
    assert not policy.keeps_kv(n_kv_heads=4, d_head=16, d_model=64)
    assert not KVDirect(4).keeps_kv(n_kv_heads=1, d_head=1, d_model=64)  # every_layer never


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_states_its_bytes(name):
    policy = POLICIES[name](8)
    got = policy.bytes_per_token(SMOLLM2)
    assert set(got) <= {"kv", "residual", "token_ids"} and all(v > 0 for v in got.values())
    if isinstance(policy, EvictionPolicy) and not policy.compress_once:
        assert got == {}  # past the budget a token's K/V are dropped
    if isinstance(policy, SnapKV):  # the prompt compressed once: decoded tokens are kept
        assert got == {"kv": kv_bytes_per_token(SMOLLM2)}
    if isinstance(policy, NoCache):
        assert got == {"token_ids": 4}


def test_gemma3_4b_past_its_sliding_window():
    """Past 1,024 tokens only Gemma 3-4B's 5 global layers grow: 20 KiB of K/V per token,
    against which one residual (5 KiB) is a quarter, not 1/27."""
    long = GEMMA3_4B.past_window()
    assert (long.n_layers, long.n_global_layers, long.sliding_window) == (5, None, None)
    table = bytes_per_token_table([GEMMA3_4B]).set_index("storage")
    assert table.loc["K/V (standard cache)", ["bytes_per_token", "past_window"]].tolist() == [
        139_264,
        20_480,
    ]
    assert table.loc["first_layer (one residual)", "past_window"] == 5_120
    assert table.loc["first_layer (one residual)", "past_window_vs_kv"] == 0.25
    assert table.loc["every_layer (resid_pre x L)", "past_window"] == 5 * 2560 * 2
    assert table.loc["token_ids", "past_window"] == 4


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: s.name)
def test_without_sliding_layers_both_rates_agree(shape):
    table = bytes_per_token_table([shape])
    assert table.past_window.tolist() == table.bytes_per_token.tolist()
    assert table.past_window_vs_kv.tolist() == table.vs_kv.tolist()


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(n_global_layers=4), "n_global_layers must be in 0..n_layers"),
        (dict(n_global_layers=1), "need a sliding_window >= 1"),
        (dict(sliding_window=8), "n_global_layers must be in"),
    ],
)
def test_a_shape_with_sliding_layers_is_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        Shape("x", n_layers=3, d_model=8, n_kv_heads=1, d_head=4, bytes_per_element=4, **bad)


@pytest.mark.parametrize("name", ["FullKV", *kvdirect_modes()])
def test_past_the_window_each_policy_grows_at_the_past_window_rate(name):
    """Measured: on tiny-gemma3 (two sliding layers of window 8, one global), once every
    window is full each generated token adds exactly the table's past_window bytes."""
    from kvdirect_interp import generate
    from kvdirect_interp.generation import held_bytes
    from tests.fixtures import random_tokens, tiny_model

    model = tiny_model("tiny-gemma3")
    shape = Shape.of(model)
    assert (shape.n_global_layers, shape.sliding_window) == (1, 8)
    policy = POLICIES[name](4)
    out = generate(model, random_tokens(1, 24, seed=5), max_new_tokens=5, cache=policy)
    held = [held_bytes(m) for m in out.memory]
    rows = bytes_per_token_table([shape])
    label = {
        "FullKV": "K/V",
        "KVDirect[every_layer]": "every_layer",
        "KVDirect[min_bytes]": "min_bytes",
        "KVDirect[first_layer]": "first_layer",
        "KVDirect[token_ids]": "token_ids",
    }[name]
    rate = rows[rows.storage.str.startswith(label)].past_window.item()
    steps = {b - a for a, b in itertools.pairwise(held[1:])}  # after the first step
    assert steps == {rate}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-gemma3"])
def test_held_after_is_what_each_kvdirect_mode_and_the_full_cache_hold_after_a_run(name):
    """`held_after`: a checkpoint for every token seen (the window's included) plus the
    window's K/V, as the runners measure them (tiny-gemma3: past its sliding window)."""
    model = tiny_model(name)
    prompt, new, window = random_tokens(1, 12, seed=7), 6, 4
    seen = 12 + new - 1  # the last new token is picked, not fed
    for mode, make in kvdirect_modes().items():
        run = generate(model, prompt, max_new_tokens=new, cache=make(window))
        expect = held_after(Shape.of(model), make(window), window, seen)
        assert measured(run.memory[-1]) == expect, mode
    full = generate(model, prompt, max_new_tokens=new)
    assert measured(full.memory[-1]) == held_after(Shape.of(model), FullKV(), 0, seen)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-gemma3"])
def test_held_after_is_what_snapkv_and_the_per_step_baselines_hold_after_a_run(name):
    """An eviction baseline holds the K/V of `held_tokens`: the budget (SnapKVPerStep, H2O),
    or for SnapKV the prompt compressed to the budget plus every token after it; a prompt
    within the budget is kept whole. tiny-gemma3 (window 8): 10 new tokens, so SnapKV's
    sliding layers hold the decoded tokens only by the end."""
    model = tiny_model(name)
    shape, new = Shape.of(model), 10
    for n_prompt, budget in [(12, 4), (12, 6), (5, 6)]:
        prompt = random_tokens(1, n_prompt, seed=8)
        seen = n_prompt + new - 1  # the last new token is picked, not fed
        for policy in (
            SnapKV(budget),
            SnapKV(budget, observation_window=2, kernel=3, pooling="max"),
            SnapKVPerStep(budget, observation_window=2, kernel=3),
            H2O(budget),
        ):
            run = generate(model, prompt, max_new_tokens=new, cache=policy)
            expect = held_after(shape, policy, budget, seen, prompt=n_prompt)
            assert measured(run.memory[-1]) == expect, (policy, n_prompt)
            kept = min(n_prompt, budget) + new - 1 if policy.compress_once else budget
            if shape.sliding_window is None:
                assert expect == kept * kv_bytes_per_token(shape)


def test_held_after_bounds_snapkv_on_sliding_layers_before_the_window_fills():
    """tiny-gemma3 (window 8): SnapKV's sliding layers lose scattered prompt tokens as the
    window passes them, so until 7 decoded tokens fill it they may hold fewer than the
    formula (an upper bound there); from then on it is exact."""
    model = tiny_model("tiny-gemma3")
    shape, new = Shape.of(model), 9
    policy = SnapKV(4, observation_window=2, kernel=3)
    run = generate(model, random_tokens(1, 12, seed=8), max_new_tokens=new, cache=policy)
    held = [measured(m) for m in run.memory]  # after the prompt, then after each step
    bound = [held_after(shape, policy, 4, 12 + i, prompt=12) for i in range(new)]
    assert all(h <= b for h, b in zip(held, bound, strict=True))
    assert held[0] == bound[0]  # right after the prompt: the budget in every layer
    assert any(h < b for h, b in zip(held, bound, strict=True))
    assert held[7:] == bound[7:]  # 7 decoded tokens: every sliding layer holds them only


def test_held_after_of_a_baseline_is_asked_with_its_budget():
    assert held_after(SMOLLM2, H2O(8), 8, 100) == 8 * kv_bytes_per_token(SMOLLM2)
    # the prompt matters to SnapKV only; without it, the run is taken to end at the prompt
    assert held_after(SMOLLM2, SnapKV(8), 8, 100, prompt=90) == 18 * kv_bytes_per_token(SMOLLM2)
    assert held_after(SMOLLM2, SnapKV(8), 8, 100) == 8 * kv_bytes_per_token(SMOLLM2)
    assert held_after(SMOLLM2, H2O(8), 8, 100, prompt=90) == 8 * kv_bytes_per_token(SMOLLM2)
    # Gemma 3-4B: 34 layers hold the last 1,023 tokens' K/V at most, the 5 global ones more
    long = held_after(GEMMA3_4B, SnapKV(256), 256, 3000, prompt=1000)
    assert long == 1023 * kv_bytes_per_token(GEMMA3_4B) + (2256 - 1023) * 20_480
    with pytest.raises(ValueError, match=r"H2O's window is its budget \(8\), got window=4"):
        held_after(SMOLLM2, H2O(8), 4, 100)
