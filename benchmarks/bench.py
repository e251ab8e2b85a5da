"""Side-by-side benchmarks (never timed tests): every ratio is measured in one run.

  .venv/bin/kvdirect-interp bench [--model smollm2-135m] [--quick] [--out PATH] [--only TABLE ...]
  (the same as .venv/bin/python benchmarks/bench.py ...)

1. decode tokens/s with an 8-token prompt and at 128 and 1,024 tokens of context (32 new
   tokens): our generate(FullKV) vs
   transformers' generate (its own cache, same HF weights) vs TransformerLens's generate,
   with transformers run twice per round as a control (two identical runs' ratio: noise);
2. rebuild_kv for N evicted tokens at one layer vs a bare torch.matmul of the same shapes
   (k and v projections fused into one GEMM) and vs the same work (norm, projections,
   rotary) through the HF model's own modules called directly. Repeated calls reuse the
   rotary cos/sin of the same positions, as the layers of one KV-Direct step do;
3. every KVDirect mode and every baseline at 1,024 context, window 64: tokens/s, bytes held
   per token, FLOPs per step from the shape formula (kvdirect_interp.cost);
4. rebuild vs read per operation over batch sizes 1, 4, 16 (claim 6);
5. load_model of every installed packaged model in a fresh process: cold (the GGUF
   dequantised, converted weights saved) vs warm (the saved entry read back; best and
   worst of three). Target: warm <= 3 s.
Results print as tables and are saved as JSON (default benchmarks/results/latest.json), each
table with the run that made it (machine, model, date); --only re-runs some tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

import kvdirect_interp as kd
from kvdirect_interp import _weights
from kvdirect_interp import experiments as ex
from kvdirect_interp.cost import Arch
from kvdirect_interp.generation import held_bytes
from kvdirect_interp.kv import rebuild_kv
from kvdirect_interp.models import model_names

TEXT = " ".join(ex.load_data("prompts.json")["prompts"])


def unwrapped_hf(name: str):
    """A second copy of the same HF model: the bridge rewires the one it wraps in place."""
    from kvdirect_interp import _tiny, models

    if name in _tiny.TINY_CONFIGS:
        return _tiny.build_tiny_hf(name)[0]
    return models._load_packaged_hf(name, torch.float32, use_converted=True)[0]


def context_tokens(model, n: int) -> torch.Tensor:
    ids = model.to_tokens(TEXT)[0]
    reps = -(-n // len(ids))
    return ids.repeat(reps)[:n][None]


def interleaved_times(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each function over `repeats` rounds, run in turns (A B C A B C ...) so a
    change in the machine's load hits every contender alike; one warm-up call each first."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def interleaved_best(fns: dict, repeats: int) -> dict:
    """Best-of-`repeats` seconds of each function (`interleaved_times`)."""
    return {name: min(ts) for name, ts in interleaved_times(fns, repeats).items()}


@torch.no_grad()
def decode_speed(model, hf, contexts, n_new: int, repeats: int) -> pd.DataFrame:
    """Tokens/s of each contender (best of `repeats` interleaved rounds). transformers runs
    twice per round under two names: the ratio of its two bests (control_ratio) is what
    the machine's noise alone makes of two identical runs, the yardstick for
    ours_over_transformers; round_ratios is the range of ours/transformers within rounds."""
    rows = []
    for ctx in contexts:
        prompt = context_tokens(model, ctx)

        def hf_generate():
            return hf.generate(
                prompt,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                do_sample=False,
                pad_token_id=0,
            )

        times = interleaved_times(
            {
                "ours": lambda: kd.generate(model, prompt, max_new_tokens=n_new),
                "transformers": hf_generate,
                "transformers_again": hf_generate,
                "transformer_lens": lambda: model.generate(
                    prompt, max_new_tokens=n_new, do_sample=False, stop_at_eos=False, verbose=False
                ),
            },
            repeats,
        )
        best = {k: min(v) for k, v in times.items()}
        per_round = [h / o for h, o in zip(times["transformers"], times["ours"], strict=True)]
        kd.generate(model, prompt, max_new_tokens=1)
        rows.append(
            {
                "context": ctx,
                **{f"{k}_tok_s": n_new / best[k] for k in ("ours", "transformers")},
                "transformer_lens_tok_s": n_new / best["transformer_lens"],
                "ours_over_transformers": best["transformers"] / best["ours"],
                "control_ratio": best["transformers_again"] / best["transformers"],
                "round_ratios": f"{min(per_round):.3f}-{max(per_round):.3f}",
                "ours_path": kd.fast_path(model).last.path,
            }
        )  # which path ours ran
    return pd.DataFrame(rows)


def hf_rebuild(model, layer: int):
    """The same work as rebuild_kv (norm, k/v projections, k-norm, rotary) through the HF
    model's own modules and functions, called directly: no bridge, no checks. What an exact
    rebuild cannot go below; None for models without rotary (not built here)."""
    from kvdirect_interp.kv import has_rotary

    if not has_rotary(model):
        return None
    block = model.blocks[layer]
    hf_attn = block.attn.original_component
    norm, k_proj, v_proj = block.ln1.original_component, hf_attn.k_proj, hf_attn.v_proj
    k_norm = getattr(hf_attn, "k_norm", None)
    rotate_half = sys.modules[type(hf_attn).__module__].rotate_half
    d_head = model.cfg.d_head

    def run(resid, cos, sin):
        """resid [1, n, d_model]; cos, sin [1, n, d_head] -> rotated k, v [1, heads, n, d_head]"""
        x = norm(resid)
        shape = (*x.shape[:-1], -1, d_head)
        k = k_proj(x).view(shape).transpose(1, 2)
        v = v_proj(x).view(shape).transpose(1, 2)
        if k_norm is not None:
            k = k_norm(k)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return (k * cos) + (rotate_half(k) * sin), v

    return run


@torch.no_grad()
def rebuild_vs_matmul(model, sizes, repeats: int) -> pd.DataFrame:
    from kvdirect_interp.kv import _cos_sin

    layer = model.cfg.n_layers // 2
    attn = model.blocks[layer].attn
    w = torch.cat(
        [attn.k.original_component.weight, attn.v.original_component.weight]
    ).T.contiguous()
    hf = hf_rebuild(model, layer)
    rows = []
    for n in sizes:
        resid = torch.randn(1, n, model.cfg.d_model)
        contenders = {
            "rebuild": lambda: rebuild_kv(model, resid, layer),
            "matmul": lambda: torch.matmul(resid[0], w),
        }
        if hf is not None:
            cos, sin = _cos_sin(model, layer, resid, torch.arange(n))  # cached by rebuild_kv too
            ours, theirs = rebuild_kv(model, resid, layer), hf(resid, cos, sin)
            if not torch.equal(ours.rot_k.transpose(1, 2), theirs[0]):
                raise AssertionError("rebuild_kv and the HF modules disagree: not the same work")
            contenders["hf_ops"] = lambda: hf(resid, cos, sin)
        best = interleaved_best(contenders, repeats)
        rows.append(
            {
                "evicted_tokens": n,
                "rebuild_s": best["rebuild"],
                "hf_ops_s": best.get("hf_ops"),
                "matmul_s": best["matmul"],
                "matmul_over_rebuild": best["matmul"] / best["rebuild"],
                "hf_ops_over_rebuild": best["hf_ops"] / best["rebuild"] if hf else None,
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def policy_frontier(model, ctx: int, window: int, n_new: int) -> pd.DataFrame:
    prompt = context_tokens(model, ctx)
    arch = Arch.of(model)
    # every registered policy at this window/budget; the KVDirect modes with one rebuild GEMM
    # per step (exact_shapes=False) and every_layer once more with exact shapes
    policies = {}
    for name, make in kd.policies.POLICIES.items():
        policy = make(window)
        if isinstance(policy, kd.KVDirect):
            policy = kd.KVDirect(window, checkpoint=policy.checkpoint, exact_shapes=False)
        policies[name] = policy
    policies["KVDirect[every_layer] (exact shapes)"] = kd.KVDirect(window)
    rows = []
    for name, policy in tqdm(policies.items(), desc="policies"):
        g = kd.generate(model, prompt, max_new_tokens=n_new, cache=policy)
        last = g.memory[-1]
        held = held_bytes(last)
        rows.append(
            {
                "policy": name,
                "tok_s": n_new / g.seconds,
                "bytes_per_token": held / last["tokens_seen"],
                "gflops_per_step": policy.step_flops(arch, ctx + n_new, prompt=ctx) / 1e9,
                "rebuilt_bytes": last["rebuilt_bytes"],
            }
        )
    return pd.DataFrame(rows)


LOAD_ONE = """
import time
import kvdirect_interp as kd
import transformer_lens.model_bridge  # imports are not part of load_model's time
start = time.perf_counter()
kd.load_model({name!r})
print("SECONDS", time.perf_counter() - start)
"""


def load_seconds(name: str, cache: str) -> float | None:
    """Seconds of one load_model call in a fresh process using this cache folder."""
    run = subprocess.run(
        [sys.executable, "-c", LOAD_ONE.format(name=name)],
        text=True,
        capture_output=True,
        env={**os.environ, "KVDIRECT_CACHE": cache},
    )
    if "MissingModelPackage" in run.stderr:
        return None  # not installed: README says how
    if run.returncode != 0:
        raise RuntimeError(f"loading {name} failed:\n{run.stderr[-2000:]}")
    return float(run.stdout.rsplit("SECONDS", 1)[1])


def load_speed(names) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as cache:  # an empty cache: the first load is cold
        for name in tqdm(names, desc="loads"):
            cold = load_seconds(name, cache)
            if cold is None:
                rows.append(
                    {
                        "model": name,
                        "cold_s": None,
                        "warm_s": None,
                        "warm_worst_s": None,
                        "cold_over_warm": None,
                    }
                )
                continue
            # best and worst of three: this VM's timings wander by 10-20 % from run to run
            warm = [load_seconds(name, cache) for _ in range(3)]
            rows.append(
                {
                    "model": name,
                    "cold_s": cold,
                    "warm_s": min(warm),
                    "warm_worst_s": max(warm),
                    "cold_over_warm": cold / min(warm),
                }
            )
    return pd.DataFrame(rows)


TABLES = ("decode", "rebuild_vs_matmul", "frontier", "rebuild_vs_read", "load")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kvdirect-interp bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=kd.DEFAULT_MODEL, choices=model_names())
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latest.json"))
    parser.add_argument(
        "--only",
        nargs="+",
        choices=TABLES,
        metavar="TABLE",
        help=f"run only these tables ({', '.join(TABLES)}); the others "
        "already in --out are kept, each with the run that made it",
    )
    args = parser.parse_args(argv)
    q = args.quick
    model = kd.load_model(args.model)
    run = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "model": args.model,
        "date": time.strftime("%Y-%m-%d"),
    }
    make = {
        "decode": lambda: decode_speed(
            model,
            unwrapped_hf(args.model),
            (8, 32) if q else (8, 128, 1024),
            8 if q else 32,
            1 if q else 5,
        ),
        "rebuild_vs_matmul": lambda: rebuild_vs_matmul(
            model, (64, 256) if q else (64, 256, 1024, 4096), 3 if q else 10
        ),
        "frontier": lambda: policy_frontier(
            model, 128 if q else 1024, 16 if q else 64, 4 if q else 16
        ),
        "rebuild_vs_read": lambda: ex.rebuild_vs_read(
            model,
            n_tokens=(64, 256) if q else (64, 256, 1024),
            batch_sizes=(1, 4) if q else (1, 4, 16),
            repeats=3,
        ),
        "load": lambda: load_speed([args.model] if q else list(_weights.PACKAGED)),
    }
    tables = {name: make[name]() for name in (args.only or TABLES)}
    with pd.option_context("display.width", 160, "display.float_format", "{:.3g}".format):
        for name, df in tables.items():
            print(f"\n== {name}\n{df.to_string(index=False)}")
    out = Path(args.out)
    results = json.loads(out.read_text()) if args.only and out.exists() else {}
    if "tables" not in results:  # a file from before tables carried their own run
        results = {"tables": {}}
    results["tables"].update(
        {k: {"run": run, "rows": v.to_dict(orient="records")} for k, v in tables.items()}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
