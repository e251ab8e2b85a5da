"""speed.py: claim 6's end-to-end decode speed per policy, from generate's own per-pass
timings (the values are timings: only their bookkeeping is tested here)."""

import pytest

from kvdirect_interp import experiments as ex
from kvdirect_interp import generate
from kvdirect_interp.cost import Arch
from kvdirect_interp.generation import HELD_KINDS
from kvdirect_interp.policies import registry
from kvdirect_interp.speed import decode_speed
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
