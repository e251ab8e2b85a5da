"""speed.py: claim 6's rebuild-vs-read tiers and end-to-end decode speed per policy, from
generate's own per-pass timings (the values are timings: only their bookkeeping is tested
here)."""

import pandas as pd
import pytest
import torch

from kvdirect_interp import experiments as ex
from kvdirect_interp import generate, results
from kvdirect_interp import verdicts as vd
from kvdirect_interp.cost import Arch
from kvdirect_interp.generation import HELD_KINDS
from kvdirect_interp.policies import registry
from kvdirect_interp.speed import (
    _add_gpu_tier,
    _median_seconds,
    decode_side_by_side,
    decode_speed,
)
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


GPU_COLUMNS = ["gpu_rebuild_s", "h2d_read_s", "gpu_rebuild_over_h2d_read", "gpu"]


def test_a_synchronised_timing_waits_for_the_device_before_each_start_and_stop():
    calls = []
    _median_seconds(lambda: calls.append("fn"), 3, sync=lambda: calls.append("sync"))
    assert calls == ["fn"] + ["sync", "fn", "sync"] * 3  # one unsynchronised warm-up first


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal without a GPU")
def test_the_gpu_tier_without_a_gpu_is_refused_by_name():
    model = tiny_model("tiny-llama")
    with pytest.raises(ValueError, match="gpu=True needs a CUDA device"):
        ex.rebuild_vs_read(model, n_tokens=(8,), batch_sizes=(1,), repeats=1, gpu=True)
    auto = ex.rebuild_vs_read(model, n_tokens=(8,), batch_sizes=(1,), repeats=1)
    assert not set(GPU_COLUMNS) & set(auto.columns)  # auto: no GPU, no GPU tier


def test_the_gpu_tiers_steps_run_on_any_device_and_leave_the_model_as_it_was():
    """The GPU tier's own steps (move, rebuild, read, move back) on the CPU as the device:
    everything but CUDA's pinning and synchronisation, which the next test covers."""
    model = tiny_model("tiny-llama")
    tokens = random_tokens(1, 6, seed=3)
    before = model(tokens)
    configs = [(1, 8), (2, 16)]
    rows = [{"batch": b, "evicted_tokens": n} for b, n in configs]
    _add_gpu_tier(model, rows, configs, layer=1, repeats=1, device="cpu")
    df = pd.DataFrame(rows)
    assert list(df.columns[-4:]) == GPU_COLUMNS and (df.gpu == "cpu").all()
    assert (df.gpu_rebuild_s > 0).all() and (df.h2d_read_s > 0).all()
    assert (df.gpu_rebuild_over_h2d_read == df.gpu_rebuild_s / df.h2d_read_s).all()
    assert torch.equal(model(tokens), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU tier needs a GPU")
def test_the_gpu_tier_times_each_configuration_and_puts_the_model_back():
    model = tiny_model("tiny-llama")
    tokens = random_tokens(1, 6, seed=3)
    before = model(tokens)
    df = ex.rebuild_vs_read(model, n_tokens=(8, 16), batch_sizes=(1, 2), repeats=1, gpu=True)
    assert list(df.columns[-4:]) == GPU_COLUMNS and len(df) == 4
    assert (df.gpu_rebuild_s > 0).all() and (df.h2d_read_s > 0).all()
    assert (df.gpu_rebuild_over_h2d_read == df.gpu_rebuild_s / df.h2d_read_s).all()
    assert next(model.parameters()).device.type == "cpu"
    assert torch.equal(model(tokens), before)  # moved back with the same bits
    tiers = results.claim6_tiers(df)
    assert sorted(tiers.tier.unique()) == ["gpu", "ram"]


def test_claim6_tiers_reads_each_tier_measured_and_skips_rows_without_it():
    """A table with the GPU tier on some rows only (a study resumed on another machine):
    every tier is judged on the rows that measured it."""
    table = pd.DataFrame(
        {
            "batch": [1, 1, 4],
            "evicted_tokens": [64, 256, 64],
            "rebuild_s": [2.0, 4.0, 6.0],
            "read_s": [0.1, 0.2, 0.3],
            "disk_read_s": [1.0, 2.0, 3.0],
            "gpu_rebuild_s": [0.01, 0.02, None],
            "h2d_read_s": [0.05, 0.01, None],
        }
    )
    tiers = results.claim6_tiers(table)
    assert tiers.groupby("tier", sort=False).size().to_dict() == {"ram": 3, "disk": 3, "gpu": 2}
    gpu = tiers[tiers.tier == "gpu"]
    assert gpu.rebuild_s.tolist() == [0.01, 0.02] and gpu.read_s.tolist() == [0.05, 0.01]
    assert gpu.rebuild_over_read.tolist() == [0.01 / 0.05, 0.02 / 0.01]
    v = vd.claim6(gpu)  # the rebuild 5x faster than the read at batch 1, 64 tokens
    assert v.verdict == vd.HOLDS and v.numbers["best"]["tier"] == "gpu"
    assert vd.claim6(tiers[tiers.tier == "ram"]).verdict == vd.FAILS
