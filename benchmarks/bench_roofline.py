"""The roofline of claim 6 checked on this machine (a benchmark, never a timed test).

  .venv/bin/python benchmarks/bench_roofline.py [--quick] [--out PATH]

In one run: this CPU's GEMM FLOP/s (fp32 matmul) and memory bandwidth (a large copy,
bytes read + written per second; `kvdirect_interp.peaks`), then claim 6's rebuild and read
per operation (`speed.rebuild_vs_read`: one layer's K/V rebuilt from residuals vs a copy of
them) for one real-width layer of Llama-3.2-1B and of Gemma 3-4B (random weights, fp32) at
batch 1, 4, 16 and N = 64 .. 4,096 evicted tokens, each beside the roofline's prediction
from the peaks just measured (`roofline.rebuild_cost`, `roofline.read_seconds`):
measured_over_predicted > 1 means slower than the roofline (which is a lower bound).
Saved as JSON (default benchmarks/results/roofline_cpu.json) with the run's provenance;
notebook 06 shows it. --quick: tiny shapes and sizes, a smoke run (small copies fit in the
caches, so its numbers say little).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from kvdirect_interp import peaks, real_shapes, roofline
from kvdirect_interp.speed import rebuild_vs_read
from kvdirect_interp.study.provenance import provenance

OUT = Path(__file__).parent / "results" / "roofline_cpu.json"


def side_by_side(model, name: str, size: str, d: roofline.Device, sizes: dict) -> pd.DataFrame:
    """rebuild_vs_read's rows for `model` with the roofline's predictions beside them."""
    layer = real_shapes.global_layer(name, size, num_hidden_layers=model.cfg.n_layers)
    measured = rebuild_vs_read(model, layer=layer, gpu=False, **sizes)
    e = next(model.parameters()).element_size()
    overrides = {"num_hidden_layers": model.cfg.n_layers}
    a = real_shapes.arch(name, size, **overrides)
    s = real_shapes.shape(name, size, e, **overrides)
    rows = []
    for r in measured.itertuples():
        cost = roofline.rebuild_cost(a, s, "every_layer", int(r.batch), int(r.evicted_tokens))
        compute, memory = cost["flops"] / d.flops, cost["rebuild_bytes"] / d.memory_bandwidth
        pred_rebuild = max(compute, memory)
        pred_read = roofline.read_seconds(d, cost["kv_bytes"], "device_memory")
        rows.append(
            {
                "model": name,
                "batch": r.batch,
                "evicted_tokens": r.evicted_tokens,
                "rebuild_s": r.rebuild_s,
                "pred_rebuild_s": pred_rebuild,
                "rebuild_measured_over_predicted": r.rebuild_s / pred_rebuild,
                "bound": "compute" if compute >= memory else "memory",
                "read_s": r.read_s,
                "pred_read_s": pred_read,
                "read_measured_over_predicted": r.read_s / pred_read,
                "rebuild_over_read": r.rebuild_over_read,
                "pred_rebuild_over_read": pred_rebuild / pred_read,
                "flops": cost["flops"],
                "rebuild_bytes": cost["rebuild_bytes"],
                "kv_bytes": cost["kv_bytes"],
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and sizes")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    q = args.quick
    size = "tiny" if q else "small"
    sizes = {
        "n_tokens": (64, 256) if q else (64, 256, 1024, 4096),
        "batch_sizes": (1, 4) if q else (1, 4, 16),
        "repeats": 2 if q else 3,
    }
    device, measured = peaks.measure("cpu", torch.float32, quick=q)
    print(
        f"{device.name}: GEMM {device.flops / 1e9:.1f} GFLOP/s (fp32), copy "
        f"{device.memory_bandwidth / 1e9:.1f} GB/s (read + written)"
    )
    tables, model = [], None
    for name in tqdm(real_shapes.CONFIGS, desc="models"):
        # one layer: a layer's rebuild and read do not depend on the layers around it
        model = real_shapes.random_model(name, size, dtype=torch.float32, num_hidden_layers=1)
        tables.append(side_by_side(model, name, size, device, sizes))
    table = pd.concat(tables, ignore_index=True)
    with pd.option_context("display.width", 200, "display.float_format", "{:.3g}".format):
        cols = ["model", "batch", "evicted_tokens", "rebuild_s", "pred_rebuild_s", "bound"]
        cols += ["read_s", "pred_read_s", "rebuild_over_read", "pred_rebuild_over_read"]
        print(table[cols].to_string(index=False))
    summary = {
        f"{side}_measured_over_predicted_median": float(
            table[f"{side}_measured_over_predicted"].median()
        )
        for side in ("rebuild", "read")
    }
    print(summary)
    run = {
        **provenance(model),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "quick": q,
        "shapes": f"real_shapes {size!r}, one layer, float32, random weights",
        "sizes": sizes,
    }
    results = {
        "run": run,
        "peaks": measured,
        "device": asdict(device),
        "summary": summary,
        "rows": table.to_dict(orient="records"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
