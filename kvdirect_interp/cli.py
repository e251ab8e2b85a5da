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

from . import results, study, verify
from .kv import REBUILD_SHAPES, reconstruction_report
from .models import DEFAULT_MODEL, list_models, load_model, model_names
from .study import cluster, jobs

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
    if args.executor != "none":
        return _study_cluster(args)
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


SLURM_FLAGS = {  # flag -> its args attribute: sbatch's, with --executor slurm only
    "--slurm-partition": "slurm_partition",
    "--slurm-time": "slurm_time",
    "--slurm-gpus-per-task": "slurm_gpus_per_task",
    "--slurm-cpus-per-task": "slurm_cpus_per_task",
    "--slurm-mem": "slurm_mem",
    "--slurm-extra": "slurm_extra",
}


def _study_flags_problem(args) -> str | None:
    """What is wrong with the study's executor flags together, or None."""
    slurm = [f for f, a in SLURM_FLAGS.items() if getattr(args, a) is not None]
    cluster = {"--shards": args.shards, "--no-wait": args.no_wait, "--logs": args.logs}
    used = [f for f, v in cluster.items() if v not in (None, False)] + slurm
    if args.executor == "none":
        if used:
            need = "slurm" if used[0] in ("--no-wait", *slurm) else "local or slurm"
            return (
                f"{used[0]} needs --executor {need} "
                "(accepted --executor: none, local, slurm; none runs here)"
            )
        return None
    if args.shard is not None:
        return "--shard runs one shard here; with --executor give the number of shards: --shards N"
    if args.merge:
        return "--merge merges here; with --executor the run merges once its shards have ended"
    if args.executor == "local" and (slurm or args.no_wait):
        flag = slurm[0] if slurm else "--no-wait"
        return f"{flag} needs --executor slurm (local shards are this command's processes)"
    counts = {
        "--shards": args.shards,
        "--slurm-time": args.slurm_time,
        "--slurm-gpus-per-task": args.slurm_gpus_per_task,
        "--slurm-cpus-per-task": args.slurm_cpus_per_task,
    }
    for flag, value in counts.items():
        if value is not None and value < 1:
            return f"{flag} must be at least 1; got {value}"
    bad = [x for x in args.slurm_extra or [] if "=" not in x or x.startswith(("=", "-"))]
    if bad:
        return (
            "--slurm-extra takes KEY=VALUE, an sbatch flag without its dashes "
            f"(e.g. account=myproject); got {bad[0]!r}"
        )
    return None


def _study_cluster(args) -> int:
    """`study --executor local|slurm`: the shards as jobs through submitit, then merged."""
    try:
        jobs.require(args.executor)
    except (ImportError, RuntimeError) as err:  # no submitit; no SLURM commands
        raise SystemExit(f"kvdirect-interp study: {err}") from None
    slurm = None
    if args.executor == "slurm":
        slurm = jobs.SlurmOptions(
            partition=args.slurm_partition,
            time=args.slurm_time or jobs.TIME_MIN,
            gpus_per_task=args.slurm_gpus_per_task,
            cpus_per_task=args.slurm_cpus_per_task,
            mem=args.slurm_mem,
            extra=dict(x.split("=", 1) for x in args.slurm_extra or []),
        )
    done = cluster.run(
        args.model,
        args.size,
        claims=args.claims,
        out=args.out,
        kind=args.executor,
        shards=args.shards or 2,
        slurm=slurm,
        logs=args.logs,
        wait=not args.no_wait,
    )
    for task, job in done.jobs:
        print(f"{task}: job {job.job_id}, log {job.paths.stderr}")
    if not done.jobs:
        print("every unit was finished already")
    for failed in done.failures:
        print(failed)
    if done.failures:
        print("submit the same command again: only the unfinished units run")
        return 1
    if done.merge_job is not None:
        print(
            f"merge job {done.merge_job.job_id} runs once every shard has ended (log "
            f"{done.merge_job.paths.stderr}); submitting again before then would run the "
            "running shards' units twice"
        )
    for claim, path in done.merged.items():
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
    group = stu.add_argument_group(
        "shards as jobs (docs/cluster.md; needs submitit: pip install 'kvdirect_interp[cluster]')"
    )
    group.add_argument(
        "--executor",
        default="none",
        choices=["none", "local", "slurm"],
        help="none: run here (default); local: --shards processes on this machine; slurm: "
        "one job array of --shards tasks (claim 6 as one job on a node of its own), merged "
        "when every shard has ended",
    )
    group.add_argument("--shards", type=int, metavar="N", help="tasks to split the units in (2)")
    group.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm: return once submitted; a last job merges when the shards have ended",
    )
    group.add_argument(
        "--logs",
        type=Path,
        metavar="DIR",
        help="job files and logs (OUT/<model>/.scratch/submitit)",
    )
    group.add_argument("--slurm-partition", metavar="P")
    group.add_argument("--slurm-time", type=int, metavar="MIN", help="time limit per job (720)")
    group.add_argument("--slurm-gpus-per-task", type=int, metavar="G")
    group.add_argument("--slurm-cpus-per-task", type=int, metavar="C", help="also torch's threads")
    group.add_argument("--slurm-mem", metavar="M", help="sbatch's --mem, e.g. 16G")
    group.add_argument(
        "--slurm-extra",
        action="append",
        metavar="KEY=VALUE",
        help="any other sbatch flag, without its dashes (account=myproject); repeatable",
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
    if args.command == "study" and (problem := _study_flags_problem(args)):
        stu.error(problem)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
