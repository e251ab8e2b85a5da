"""Command line: `kvdirect-interp verify` (every claim, a verdict table), `study` (the
resumable research-scale runner), `bench` (the side-by-side benchmarks), `report`
(per-layer K/V reconstruction) and `models`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from .kv import REBUILD_SHAPES, reconstruction_report
from .models import DEFAULT_MODEL, list_models, load_model, model_names

DEMO_TEXT = (
    "The history of the Roman Empire spans many centuries. It began when Augustus "
    "became the first emperor in 27 BC and lasted in the West until 476 AD."
)


def _report(args) -> int:
    t0 = time.perf_counter()
    model = load_model(args.model)
    print(
        f"loaded {args.model} in {time.perf_counter() - t0:.1f}s: {model.cfg.n_layers} "
        f"layers, d_model {model.cfg.d_model}"
    )
    df = reconstruction_report(model, args.text, shapes=args.shapes)
    summary = df.groupby(["shape", "tensor"], sort=False).agg(
        layers=("layer", "size"),
        bitwise_equal_layers=("bitwise_equal", lambda s: int(s.sum())),
        max_abs_err=("max_abs_err", "max"),
        max_ulp=("max_ulp", "max"),
    )
    with pd.option_context("display.width", 120, "display.max_rows", 500):
        if args.per_layer:
            print(df.to_string(index=False))
        print(
            "\nK/V rebuilt from resid_pre vs the forward pass's hooks "
            f"({model.to_tokens(args.text).shape[1]} tokens, fp32):"
        )
        print(summary.to_string())
    print(
        "\n'same' = one GEMM over all tokens, as in the forward pass; 'one_token' = a 1-row "
        "GEMM per token (another kernel path). Differences are reported, never hidden."
    )
    return 0


def _verify(args) -> int:
    from . import results, verify

    t0 = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s; measuring every claim...")
    checks = verify.run(model)
    for c in checks:
        v = c.verdict
        print(f"\nClaim {v.claim}\n  paper:    {v.paper}")
        for p in v.parts:
            print(f"  part [{'held' if p.held else 'not held'}] {p.name}: {p.measured}")
        print(f"  verdict:  {v.verdict}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print("\n" + verify.table(checks)[["claim", "verdict"]].to_string(index=False))
    print(
        f"\nfull-size results: results/{args.model}/ (written by "
        f"`kvdirect-interp study --model {args.model} --size full`)"
    )
    if model is not None and (results.results_dir() / args.model).is_dir():
        stored = results.stored_verdicts(args.model, model)
        with pd.option_context("display.width", 200, "display.max_colwidth", 90):
            print("verdicts from the stored full study (results.stored_verdicts):")
            print(stored[["claim", "slice", "units", "verdict"]].to_string(index=False))
    if args.json:
        payload = {
            "model": args.model,
            "torch": torch.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "verdicts": [c.as_json() for c in checks],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=float))
        print(f"\nnumbers written to {args.json}")
    return 0


def _study(args) -> int:
    from . import study

    shard = study.parse_shard(args.shard)
    claims = args.claims or list(study.CLAIMS)
    t0 = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s")
    other = study.loader(args.model)  # claim 1's bf16 model, loaded when its units run
    if not args.merge:
        done = study.run_study(
            args.model,
            args.size,
            claims=claims,
            shard=shard,
            out=args.out,
            load=lambda dtype: model if dtype == "float32" else other(dtype),
        )
        print(f"{len(done.ran)} units measured, {len(done.skipped)} already finished")
        for claim, seconds in done.seconds.items():
            print(f"  claim {claim}: {seconds:.1f}s")
        if shard != (0, 1):
            print("a shard ran; merge when every shard has finished: add --merge")
            return 0
    for claim, path in study.merge(
        args.model, args.size, claims=claims, out=args.out, model=model
    ).items():
        print(f"claim {claim}: {path}")
    return 0


BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def _bench(args) -> int:
    import runpy

    if not BENCH.exists():
        raise SystemExit(
            f"{BENCH} not found: the benchmarks ship with the repository, not "
            f"the package; run `kvdirect-interp bench` from an editable install "
            f"of a clone (scripts/setup.sh does that)"
        )
    runpy.run_path(str(BENCH))["main"](args.bench_args)
    return 0


def _models(args) -> int:
    print(list_models().drop(columns=["weights"]).to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvdirect-interp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ver = sub.add_parser("verify", help="measure every claim and print the verdict table")
    ver.add_argument("--model", default=DEFAULT_MODEL, choices=model_names())
    ver.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    ver.set_defaults(func=_verify)
    stu = sub.add_parser(
        "study",
        help="the resumable, shardable research-scale run (one table per claim)",
        description="Measure each claim's units (kvdirect_interp/study/plan.py lists them), "
        "appending each finished unit to OUT/<model>/claim<N>.jsonl; finished units are "
        "skipped, so a killed run resumes. An unsharded run ends by merging the tables "
        "(OUT/<model>/claim<N>.parquet, or .csv without pyarrow).",
    )
    stu.add_argument("--model", default=DEFAULT_MODEL, choices=model_names())
    stu.add_argument("--size", required=True, choices=["smoke", "full"])
    stu.add_argument("--claims", nargs="+", type=int, choices=range(1, 7), metavar="N")
    stu.add_argument(
        "--shard", metavar="i/n", help="every n-th unit from unit i, 0-based (0 <= i < n)"
    )
    stu.add_argument("--out", default="results", type=Path, help="results folder (results)")
    stu.add_argument(
        "--merge", action="store_true", help="only merge the finished units into tables"
    )
    stu.set_defaults(func=_study)
    ben = sub.add_parser(
        "bench",
        add_help=False,
        help="the side-by-side benchmarks (benchmarks/bench.py; --help there)",
    )
    ben.set_defaults(func=_bench)  # its arguments are bench.py's own (parsed there)
    rep = sub.add_parser("report", help="per-layer K/V reconstruction report")
    rep.add_argument("--model", default=DEFAULT_MODEL, choices=model_names())
    rep.add_argument("--text", default=DEMO_TEXT)
    rep.add_argument("--shapes", nargs="+", default=["same", "one_token"], choices=REBUILD_SHAPES)
    rep.add_argument("--per-layer", action="store_true", help="print every layer's row")
    rep.set_defaults(func=_report)
    sub.add_parser("models", help="list the model names").set_defaults(func=_models)
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
