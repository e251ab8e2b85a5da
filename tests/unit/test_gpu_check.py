"""The prepared GPU run, run on the CPU with tiny shapes (the same code): the files and
columns it writes. No timing is asserted: timings belong to the machine."""

import json

import pandas as pd
import pytest
import torch

from kvdirect_interp import gpu_check, roofline

TIER_COLUMNS = {
    "model", "batch", "evicted_tokens", "layer", "rebuild_s", "device_read_s", "host_read_s",
    "rebuild_over_device_read", "rebuild_over_host_read",
    "peak_rebuild_s", "peak_device_read_s", "peak_host_read_s",
}  # fmt: skip
DECODE_COLUMNS = {
    "model", "policy", "context", "new_tokens", "decode_tok_s", "end_to_end_tok_s",
    "peak_bytes", "peak_what", "bytes_held", "rebuilt_bytes_max", "gflops_per_step",
    "peak_decode_tok_s",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    gpu_check.main(["--tiny", "--out", str(out), "--no-progress"])
    return out


def test_tiny_run_writes_its_files_and_columns(tiny_run):
    plan = gpu_check.PLANS["tiny"]
    tiers = pd.read_csv(tiny_run / "tiers.csv")
    assert TIER_COLUMNS <= set(tiers.columns)
    assert len(tiers) == len(gpu_check.MODELS) * len(plan.batches) * len(plan.n_tokens)
    assert set(tiers.model) == set(gpu_check.MODELS)
    # Gemma's first global layer (five sliding layers first), Llama's first layer
    assert dict(zip(tiers.model, tiers.layer, strict=True)) == {"gemma3-4b": 5, "llama3.2-1b": 0}
    decode = pd.read_csv(tiny_run / "decode.csv")
    assert DECODE_COLUMNS <= set(decode.columns)
    names = [p.name for p in gpu_check.policies(plan.window)]
    assert names[0] == "FullKV" and names[-1] == "H2O" and len(names) == 6
    for (model, context), g in decode.groupby(["model", "context"]):
        assert list(g.policy) == names, (model, context)
    assert set(decode.context) == set(plan.contexts)
    assert "skipped" not in decode.columns  # the tiny plan fits its budget
    assert "error" not in decode.columns  # no decode row failed
    assert (decode.bytes_held > 0).all() and (decode.gflops_per_step > 0).all()


def test_tiny_run_records_provenance_and_peaks(tiny_run):
    results = json.loads((tiny_run / "gpu_check.json").read_text())
    assert set(results) >= {"provenance", "peaks", "devices", "estimate", "tiers", "decode"}
    prov = results["provenance"]
    for key in ("device", "nvidia_driver", "cuda_version", "torch_version", "git_commit", "plan"):
        assert key in prov
    assert prov["device"] == "cpu" and prov["plan"]["name"] == "tiny"
    assert set(results["devices"]) == {"peak"}  # no published specs for a CPU
    assert results["peaks"]["gemm_flops"] > 0 and results["peaks"]["copy_bandwidth"] > 0


def test_the_full_plan_is_estimated_under_five_minutes_on_an_h100():
    h100 = roofline.load_devices()["H100 SXM"]
    estimate = gpu_check.estimate_seconds(gpu_check.PLANS["full"], h100)
    assert estimate["roofline_s"] < estimate["with_allowance_s"] < 300


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_full_plan_needs_cuda(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--plan", "full", "--out", "unused"])
    assert "needs a CUDA device" in capsys.readouterr().err
