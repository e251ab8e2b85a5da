"""Claim 6 and decode speed on a GPU, prepared: one command, no packaged weights.

  bash scripts/gpu_check.sh [--plan auto|full|cpu|tiny] [--out results/gpu_check]
  (the same as .venv/bin/python -m kvdirect_interp.gpu_check ...)

On random weights of real shapes (`real_shapes`: Gemma 3-4B and Llama-3.2-1B; bf16 on a
GPU), in one run:
1. this device's peaks (`peaks`): GEMM FLOP/s, copy bandwidth, pinned host -> device;
2. claim 6's tiers per batch x N evicted tokens at each model's first global layer:
   rebuild its K/V from residuals held on the device (`kv.rebuild_kv`), read them from the
   device's memory (a copy there), copy them from pinned host memory (on a CPU: a RAM copy);
3. decode tokens/s and peak memory (torch.cuda.max_memory_allocated; on a CPU the peak RSS)
   under FullKV, every KV-Direct mode (one rebuild GEMM per step:
   exact_shapes=False) and H2O at each context. Tokens/s come from two generations of
   different lengths, each synchronised: their difference is the decode steps alone;
each beside the roofline's prediction for this device: from its published specs where
data/devices.json knows it (spec_*), and from the peaks measured in step 1 (peak_*).
Plans: "full" (CUDA: batch 1/4/16/64, N 64..4,096, contexts 1,024 and 4,096), "cpu" (real
widths on fewer layers, small sizes), "tiny" (the tests); "auto" picks full on CUDA, else
cpu. Writes tiers.csv, decode.csv and gpu_check.json (every row, the peaks, the plan,
provenance) to --out; notebook 06 reads gpu_check.json. tiers.csv is written as soon as
the tiers are done, and a decode row that fails records its error and the run goes on, so
a first run on a new machine keeps what it measured.

Time on one H100, estimated (`estimate_seconds`, printed at the start; not measured): the
roofline's lower bound for the full plan's work is about 3 s; with an allowance of 0.1 s
per forward pass (408 of them) for Python and kernel launches and 30 s per model built,
about 105 s. No decode row starts once --budget-s (default 240 s) is spent; those left
say so, and the run stays under five minutes even if the allowances are short.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import peaks, real_shapes, roofline
from .cost import forward_flops
from .gpu_timings import decode_row, tier_row
from .policies import H2O, FullKV, KVDirect
from .policies.kvdirect import MODES as KVDIRECT_MODES
from .study.provenance import provenance

MODELS = ("gemma3-4b", "llama3.2-1b")
FORWARD_OVERHEAD_S = 0.1  # Python and launches per forward pass: an allowance, not measured
BUILD_S = 30.0  # allowance per model built (random init and the bridge's boot)


@dataclass(frozen=True)
class Plan:
    name: str
    size: str  # a real_shapes size
    dtype: str
    batches: tuple[int, ...]
    n_tokens: tuple[int, ...]
    contexts: tuple[int, ...]
    window: int  # KV-Direct's window and H2O's budget
    short: int  # new tokens of the shorter generation; the longer one makes `long`
    long: int
    repeats: int


PLANS = {
    "full": Plan("full", "full", "bfloat16", (1, 4, 16, 64), (64, 256, 1024, 4096),
                 (1024, 4096), 64, 2, 10, 5),
    "cpu": Plan("cpu", "small", "float32", (1, 4), (64, 256), (128, 256), 32, 2, 5, 3),
    "tiny": Plan("tiny", "tiny", "float32", (1, 2), (8, 16), (24, 40), 8, 1, 3, 1),
}  # fmt: skip


def policies(window: int) -> list:
    """FullKV, every KV-Direct mode (one rebuild GEMM per step) and H2O at `window`."""
    modes = [KVDirect(window, checkpoint=m, exact_shapes=False) for m in KVDIRECT_MODES]
    return [FullKV(), *modes, H2O(window)]


def _element_bytes(plan: Plan) -> int:
    return torch.finfo(getattr(torch, plan.dtype)).bits // 8


def _devices(dev: torch.device, peak_device: roofline.Device) -> dict[str, roofline.Device]:
    """{"peak": measured here, "spec": published (CUDA devices data/devices.json knows)}."""
    out = {"peak": peak_device}
    spec = roofline.device_for(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else None
    return out | ({"spec": spec} if spec is not None else {})


def predict_tiers(tiers: pd.DataFrame, devices: dict, shapes: dict) -> pd.DataFrame:
    """`tiers` with the roofline's every_layer rebuild and reads beside each row:
    <kind>_rebuild_s, <kind>_device_read_s, <kind>_host_read_s, kind "spec" or "peak".
    A CPU has no host link: its host read is a RAM copy, predicted as a device read."""
    out = tiers.copy()
    for kind, d in devices.items():
        cols = {f"{kind}_{c}": [] for c in ("rebuild_s", "device_read_s", "host_read_s")}
        for row in tiers.itertuples():
            a, s = shapes[row.model]
            b, n = int(row.batch), int(row.evicted_tokens)
            cost = roofline.rebuild_cost(a, s, "every_layer", b, n)
            device_read = roofline.read_seconds(d, cost["kv_bytes"], "device_memory")
            host_read = roofline.read_seconds(d, cost["kv_bytes"], "pinned_host")
            cols[f"{kind}_rebuild_s"].append(d.time(cost["flops"], cost["rebuild_bytes"]))
            cols[f"{kind}_device_read_s"].append(device_read)
            cols[f"{kind}_host_read_s"].append(device_read if math.isnan(host_read) else host_read)
        out = out.assign(**cols)
    return out


def predict_decode(decode: pd.DataFrame, devices: dict, shapes: dict, e: int) -> pd.DataFrame:
    """`decode` with <kind>_decode_tok_s: 1 / the roofline's step (`decode_step_seconds`)."""
    out = decode.copy()
    for kind, d in devices.items():
        out[f"{kind}_decode_tok_s"] = [
            1 / roofline.decode_step_seconds(
                d, shapes[r.model][0], r.gflops_per_step * 1e9, r.bytes_held,
                r.rebuilt_bytes_max, e,
            )
            if not math.isnan(r.gflops_per_step) else math.nan
            for r in decode.itertuples()
        ]  # fmt: skip
    return out


def estimate_seconds(plan: Plan, d: roofline.Device) -> dict[str, float]:
    """The plan's time on device `d`: the roofline's lower bound for its work (tiers:
    (repeats + 1) x each tier; decode: every forward pass at its policy's step FLOPs and
    a prefill per generation) and, with FORWARD_OVERHEAD_S per forward pass and BUILD_S
    per model, an allowance for what the roofline leaves out."""
    e = _element_bytes(plan)
    work, passes = 0.0, 0
    for name in MODELS:
        a, s = real_shapes.arch(name, plan.size), real_shapes.shape(name, plan.size, e)
        weights = roofline.weight_bytes(a, e)
        for b in plan.batches:
            for n in plan.n_tokens:
                cost = roofline.rebuild_cost(a, s, "every_layer", b, n)
                kv = cost["kv_bytes"]
                reads = 2 * kv / d.memory_bandwidth + kv / (d.link_bandwidth or d.memory_bandwidth)
                work += (plan.repeats + 1) * (d.time(cost["flops"], cost["rebuild_bytes"]) + reads)
        for ctx in plan.contexts:
            for policy in policies(plan.window):
                for n_new in (2, plan.short, plan.long):  # warm-up, short, long
                    passes += n_new + 1
                    work += d.time(forward_flops(a, ctx, (ctx + 1) / 2, logits=1), weights)
                    work += n_new * d.time(policy.step_flops(a, ctx + n_new), weights)
    allowance = passes * FORWARD_OVERHEAD_S + len(MODELS) * BUILD_S
    return {"roofline_s": work, "forward_passes": passes, "with_allowance_s": work + allowance}


def _nvidia_driver() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def run_provenance(model, dev: torch.device, plan: Plan) -> dict:
    """provenance() of the study plus the GPU, its driver and CUDA, and the plan."""
    cuda = dev.type == "cuda"
    sources = "; ".join(real_shapes.CONFIGS[m]["source"] for m in MODELS)
    return {
        **provenance(model),
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "gpu_capability": str(torch.cuda.get_device_capability(dev)) if cuda else None,
        "nvidia_driver": _nvidia_driver() if cuda else None,
        "cuda_version": torch.version.cuda,  # the CUDA torch was built with (None: CPU build)
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "python": sys.version.split()[0],
        "plan": asdict(plan),
        "weights": f"random (seeded), of real shapes: {sources}",
    }


def run(plan: Plan, out: Path, device: str, budget_s: float, progress: bool = True) -> dict:
    """Run `plan` on `device` and write its results to `out`; returns what it wrote."""
    start = time.perf_counter()
    dev, dtype, e = torch.device(device), getattr(torch, plan.dtype), _element_bytes(plan)
    peak_device, measured = peaks.measure(device, dtype, quick=plan.name == "tiny")
    devices = _devices(dev, peak_device)
    estimate = estimate_seconds(plan, devices.get("spec", peak_device))
    print(
        f"plan {plan.name} on {peak_device.name}: estimated {estimate['roofline_s']:.0f} s "
        f"(roofline), {estimate['with_allowance_s']:.0f} s with allowances"
    )
    shapes = {
        m: (real_shapes.arch(m, plan.size), real_shapes.shape(m, plan.size, e)) for m in MODELS
    }
    units = len(MODELS) * (1 + len(plan.batches) * len(plan.n_tokens))
    units += len(MODELS) * len(plan.contexts) * len(policies(plan.window))
    bar = tqdm(total=units, desc="gpu check", disable=not progress)
    models, tiers, decode = {}, [], []
    for name in MODELS:
        models[name] = real_shapes.random_model(name, plan.size, dtype=dtype, device=device)
        bar.update()
        layer = real_shapes.global_layer(name, plan.size)
        for b in plan.batches:
            for n in plan.n_tokens:
                tiers.append({"model": name, **tier_row(models[name], layer, b, n, plan.repeats)})
                bar.update()
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(tiers).to_csv(out / "tiers.csv", index=False)  # kept if decode fails
    for ctx in plan.contexts:  # every model's shorter context first: a budget stop keeps both
        for name, model in models.items():
            prompt = torch.randint(3, 259, (1, ctx), generator=torch.Generator().manual_seed(ctx))
            for policy in policies(plan.window):
                row = {"model": name, "policy": policy.name, "context": ctx}
                if time.perf_counter() - start > budget_s:
                    row["skipped"] = f"time budget of {budget_s:.0f} s spent"
                else:
                    try:
                        arch = shapes[name][0]
                        row |= decode_row(model, policy, prompt, plan.short, plan.long, arch)
                    except torch.OutOfMemoryError as err:  # CUDA only: record it, go on
                        row["skipped"] = f"out of memory: {str(err).splitlines()[0]}"
                        torch.cuda.empty_cache()
                    except Exception as err:  # a path never run on this device: keep the rest
                        row["error"] = f"{type(err).__name__}: {err}"[:500]
                        print(f"decode {name} {policy.name} {ctx}: {row['error']}", file=sys.stderr)
                decode.append(row)
                bar.update()
    bar.close()
    tiers_df = predict_tiers(pd.DataFrame(tiers), devices, shapes)
    decode_df = pd.DataFrame(decode)
    for col in ("gflops_per_step", "bytes_held", "rebuilt_bytes_max"):
        if col not in decode_df:
            decode_df[col] = math.nan
    decode_df = predict_decode(decode_df, devices, shapes, e)
    results = {
        "provenance": run_provenance(next(iter(models.values())), dev, plan),
        "peaks": measured,
        "devices": {k: asdict(d) for k, d in devices.items()},
        "estimate": estimate,
        "elapsed_s": time.perf_counter() - start,
        "tiers": tiers_df.to_dict(orient="records"),
        "decode": decode_df.to_dict(orient="records"),
    }
    tiers_df.to_csv(out / "tiers.csv", index=False)
    decode_df.to_csv(out / "decode.csv", index=False)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kvdirect_interp.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="results/gpu_check", help="results folder")
    parser.add_argument("--plan", default="auto", choices=["auto", *PLANS])
    parser.add_argument("--tiny", action="store_true", help="the tiny plan (same as --plan tiny)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="start no decode row after this many seconds")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    name = "tiny" if args.tiny else args.plan
    if name == "auto":
        name = "full" if cuda else "cpu"
    if name == "full" and not cuda:
        parser.error("--plan full needs a CUDA device (torch.cuda.is_available() is False)")
    device = "cuda" if cuda and name == "full" else "cpu"
    results = run(PLANS[name], Path(args.out), device, args.budget_s, not args.no_progress)
    print(f"done in {results['elapsed_s']:.0f} s; wrote {args.out}/ (tiers.csv, decode.csv, "
          "gpu_check.json)")  # fmt: skip


if __name__ == "__main__":
    main()
