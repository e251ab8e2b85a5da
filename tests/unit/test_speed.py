"""speed.py: claim 6's end-to-end decode speed per policy, from generate's own per-pass
timings (the values are timings: only their bookkeeping is tested here)."""

import pytest

from kvdirect_interp import experiments as ex
from kvdirect_interp import generate
from kvdirect_interp.cost import Arch
from kvdirect_interp.generation import HELD_KINDS
from kvdirect_interp.policies import registry
from kvdirect_interp.speed import decode_side_by_side, decode_speed
from tests.fixtures import random_tokens, tiny_model


def test_every_forward_pass_records_its_seconds():
    model = tiny_model("tiny-llama")
    g = generate(model, random_tokens(1, 12, seed=3), max_new_tokens=5)
    assert len(g.memory) == 5 and all(r["seconds"] > 0 for r in g.memory)
    assert sum(r["seconds"] for r in g.memory) <= g.seconds  # the passes, not the bookkeeping


@pytest.mark.parametrize("name", ["FullKV", "KVDirect[every_layer]", "H2O", "NoCache"])
def test_decode_speed_reads_one_generation(name):
    model = tiny_model("tiny-qwen2")
    policy = registry.make(name, 6)
    prompt = random_tokens(1, 20, seed=5)
    row = decode_speed(model, policy, prompt, new_tokens=6)
    again = generate(model, prompt, max_new_tokens=6, cache=registry.make(name, 6))
    assert row["policy"] == policy.name and (
        row["prompt_tokens"],
        row["context"],
        row["new_tokens"],
    ) == (20, 26, 6)
    assert row["decode_tok_s"] == pytest.approx(1 / row["decode_step_s"])
    assert row["prefill_s"] > 0 and row["end_to_end_tok_s"] > 0
    held = {k: again.memory[-1].get(k) or 0 for k in HELD_KINDS}  # bytes do not depend on timing
    assert {k: row[k] for k in HELD_KINDS} == held and row["bytes_held"] == sum(held.values())
    assert row["gflops_per_step"] == policy.step_flops(Arch.of(model), 24) / 1e9
    assert ex.decode_speed is decode_speed  # one home, re-exported with claim 6's others


def test_decode_speed_needs_a_decode_step():
    with pytest.raises(ValueError, match="new_tokens must be >= 2"):
        decode_speed(
            tiny_model("tiny-llama"),
            registry.make("FullKV", 4),
            random_tokens(1, 8, seed=0),
            new_tokens=1,
        )


def test_side_by_side_gives_one_row_per_policy_with_medians_over_rounds():
    model = tiny_model("tiny-llama")
    names = ["FullKV", "H2O", "KVDirect[every_layer]"]
    prompt = random_tokens(1, 16, seed=2)
    df = decode_side_by_side(
        model, [registry.make(n, 6) for n in names], prompt, new_tokens=4, rounds=3
    )
    assert list(df.policy) == [registry.make(n, 6).name for n in names] and (df.rounds == 3).all()
    assert (df.decode_tok_s * df.decode_step_s - 1).abs().max() < 1e-12
    assert (df.decode_tok_s_min <= df.decode_tok_s).all()
    assert (df.decode_tok_s <= df.decode_tok_s_max).all()
    first = df.iloc[0]
    assert first.vs_first_min == first.vs_first_max == 1  # the first against itself
    assert (df.vs_first_min <= df.vs_first_max).all()
    one = {n: decode_speed(model, registry.make(n, 6), prompt, new_tokens=4) for n in names}
    for row in df.itertuples():  # bytes and FLOPs do not depend on the rounds
        want = one[row.policy]
        assert (row.bytes_held, row.gflops_per_step) == (
            want["bytes_held"],
            want["gflops_per_step"],
        )
        assert row.context == want["context"] == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rounds": 0}, "rounds must be"), ({"names": ["H2O", "H2O"]}, "each policy once")],
)
def test_side_by_side_refuses_bad_settings(kwargs, message):
    names = kwargs.pop("names", ["FullKV"])
    with pytest.raises(ValueError, match=message):
        decode_side_by_side(
            tiny_model("tiny-llama"),
            [registry.make(n, 4) for n in names],
            random_tokens(1, 8, seed=0),
            **kwargs,
        )
