"""Activation patching side by side (a benchmark, never a timed test): patch_sweep's exact
and fast modes against TransformerLens's patching on the same bridge and prompts.

  .venv/bin/python benchmarks/bench_patching.py [--models smollm2-135m gemma3-270m]
      [--n-pos 15] [--batch 1] [--check-all] [--quick] [--out PATH]

Per model: one clean/donor pair (or --batch pairs) of --n-pos tokens, one position patched
at a time at every layer (layers x positions cells), metric D_KL(donor || patched) at the
last position (float64). Contenders, each run once, in one process, one after another:

1. resid_pre: TL's get_act_patch_resid_pre (its donor run_with_cache included) vs
   patch_sweep(exact=True) vs patch_sweep(exact=False);
2. resid_mid: a TL-style loop (run_with_hooks per cell with hooks.patch_hooks, which also
   rebuilds the block output: TL's get_act_patch_resid_mid edits hook_resid_mid alone, which
   in TransformerBridge patches only the MLP's input) vs ours;
3. attribution patching (attribution_sweep, resid_pre): its time, and how well it estimates
   the exact sweep (Pearson and Spearman correlation of the changes, largest and median
   metric error, the worst cell);
4. every site: TL's get_act_patch_block_every (resid_pre, attn_out, mlp_out: three patched
   passes per cell) vs our three sweeps (resid_pre, resid_mid, resid_post).

Checked in the same run: our exact values against the same metric computed from the logits
of TL's one-patch-per-forward passes (resid_pre from 1, resid_mid from 2, bitwise), and for
resid_post against patch_residual on --ref-cells cells; the fast mode's largest metric
difference from the exact values over every cell, and its largest logit difference over the
cells it checks itself (over every cell with --check-all, an extra untimed sweep). Warm-up
(the fast path's tree, its probes, one forward pass) is not timed. --quick runs tiny models
at small sizes: a smoke run, not a timing. Results print as a table and are saved as JSON
(default benchmarks/results/patching.json), with the run that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

import kvdirect_interp as kd
from kvdirect_interp import experiments as ex
from kvdirect_interp.hooks import capture_residuals, patch_hooks, patch_residual

CLEAN = "The capital of Spain is Madrid, and its largest museum is the Prado in the city centre."
DONOR = "The capital of Italy is Rome, and its largest museum is the Vatican in the city centre."


def prompt_pair(model, n_pos: int, n_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and donor tokens [n_batch, n_pos]: the two texts cut to n_pos tokens (more
    pairs: the prompt set's texts)."""
    texts = [(CLEAN, DONOR)]
    prompts = ex.load_data("prompts.json")["prompts"]
    texts += list(zip(prompts[0::2], prompts[1::2], strict=False))
    rows = []
    for clean, donor in texts[:n_batch]:
        c, d = kd.to_tokens(model, clean)[0], kd.to_tokens(model, donor)[0]
        if min(len(c), len(d)) < n_pos:
            reps = -(-n_pos // min(len(c), len(d)))
            c, d = c.repeat(reps), d.repeat(reps)
        rows.append((c[:n_pos], d[:n_pos]))
    return torch.stack([c for c, _ in rows]), torch.stack([d for _, d in rows])


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def recording_kl(donor_logits: torch.Tensor):
    """A TL patching metric (logits -> scalar) that keeps each pass's per-pair values."""
    seen: list[torch.Tensor] = []

    def metric(logits):
        kl = kd.kl_divergence(donor_logits[:, -1], logits[:, -1])  # [batch], float64
        seen.append(kl)
        return kl.mean()

    return metric, seen


def ours_values(df: pd.DataFrame, n_layers: int, n_pos: int, n_batch: int) -> torch.Tensor:
    """patch_sweep's values as [layers * positions, batch] (TL's cell order)."""
    values = torch.tensor(df.kl_to_donor.to_numpy(), dtype=torch.float64)
    return values.reshape(n_layers * n_pos, n_batch)


@torch.no_grad()
def bench_model(name: str, n_pos: int, n_batch: int, ref_cells: int, check_all: bool) -> list:
    from transformer_lens import patching

    model = kd.load_model(name)
    clean, donor = prompt_pair(model, n_pos, n_batch)
    n_layers = model.cfg.n_layers
    sites = [s for s in kd.hooks.SITES if f"blocks.0.hook_{s}" in model.hook_dict]
    donor_logits = kd.forward(model, donor)

    # warm-up, untimed: the fast path's tree and probes, the bridge's first pass
    model.run_with_hooks(clean, fwd_hooks=[])
    for site in sites:
        kd.patch_sweep(model, clean, donor, site=site, layers=[0], progress=False)
    rows = []

    def sweep(site, exact):
        return timed(
            lambda: kd.patch_sweep(
                model, clean, donor, site=site, per_position=True, exact=exact, progress=False
            )
        )

    def row(table, contender, seconds, tl_seconds, **extra):
        rows.append(
            {
                "model": name,
                "table": table,
                "contender": contender,
                "cells": n_layers * n_pos,
                "seconds": seconds,
                "speedup_vs_tl": tl_seconds / seconds,
                **extra,
            }
        )

    # ours first: TL's run_with_cache makes HF install output-capturing hooks on the
    # bridge's modules, which the fast path counts as hooks (it then steps aside)
    ours = {(site, exact): sweep(site, exact) for site in sites for exact in (True, False)}
    checked_all = {}  # untimed: the fast mode's logits against the exact ones, every cell
    for site in sites if check_all else []:
        full = kd.patch_sweep(
            model,
            clean,
            donor,
            site=site,
            per_position=True,
            exact=False,
            check="all",
            progress=False,
        )
        checked_all[site] = full.attrs["max_abs_logit_diff"]

    # 1. resid_pre
    metric, seen = recording_kl(donor_logits)

    def tl_resid_pre():
        _, cache = model.run_with_cache(donor)
        return patching.get_act_patch_resid_pre(model, clean, cache, metric)

    _, tl_pre = timed(tl_resid_pre)
    tl_values = {"resid_pre": torch.stack(seen)}
    row("resid_pre", "TL get_act_patch_resid_pre", tl_pre, tl_pre)

    # 2. resid_mid (where the model has one)
    tl_mid = None
    if "resid_mid" in sites:
        metric, seen = recording_kl(donor_logits)

        def tl_resid_mid():
            _, cache = model.run_with_cache(donor)
            for l in range(n_layers):
                source = cache[f"blocks.{l}.hook_resid_mid"]
                for p in range(n_pos):
                    hooks = patch_hooks(l, "resid_mid", source, [p])
                    metric(model.run_with_hooks(clean, fwd_hooks=hooks))

        _, tl_mid = timed(tl_resid_mid)
        tl_values["resid_mid"] = torch.stack(seen)
        row("resid_mid", "TL-style loop (run_with_hooks per cell)", tl_mid, tl_mid)

    # 3. every site
    metric, _ = recording_kl(donor_logits)

    def tl_block_every():
        _, cache = model.run_with_cache(donor)
        return patching.get_act_patch_block_every(model, clean, cache, metric)

    _, tl_every = timed(tl_block_every)

    # bitwise against one patch per forward pass
    trace = capture_residuals(model, donor, sites=("resid_post",))
    step = max(1, n_layers * n_pos // max(ref_cells, 1))
    post_cells = [(l, p) for l in range(n_layers) for p in range(n_pos)][::step][:ref_cells]
    post_ref = torch.stack(
        [
            kd.kl_divergence(
                donor_logits[:, -1],
                patch_residual(model, clean, layer=l, source=trace, positions=p, site="resid_post")[
                    :, -1
                ],
            )
            for l, p in post_cells
        ]
    )
    for site in sites:
        tl_seconds = {"resid_pre": tl_pre, "resid_mid": tl_mid, "resid_post": None}[site]
        (exact_df, exact_s), (fast_df, fast_s) = ours[site, True], ours[site, False]
        exact_v = ours_values(exact_df, n_layers, n_pos, n_batch)
        fast_v = ours_values(fast_df, n_layers, n_pos, n_batch)
        if site in tl_values:
            bitwise = bool(torch.equal(exact_v, tl_values[site]))
            compared = f"all {n_layers * n_pos} cells vs TL's passes"
        else:
            index = [l * n_pos + p for l, p in post_cells]
            bitwise = bool(torch.equal(exact_v[index], post_ref))
            compared = f"{len(post_cells)} cells vs patch_residual"
        fast_metric_diff = float((fast_v - exact_v).abs().max())
        extra_fast = {
            "max_metric_diff_all_cells": fast_metric_diff,
            "max_logit_diff_checked": fast_df.attrs["max_abs_logit_diff"],
            "checked_cells": fast_df.attrs["checked_cells"],
        }
        if check_all:
            extra_fast["max_logit_diff_all_cells"] = checked_all[site]
        if tl_seconds is not None:
            row(
                site,
                "ours exact",
                exact_s,
                tl_seconds,
                path=exact_df.attrs["path"],
                bitwise=bitwise,
                compared=compared,
                tail_positions=len(exact_df.attrs.get("tail_positions", [])),
            )
            row(site, "ours fast", fast_s, tl_seconds, path=fast_df.attrs["path"], **extra_fast)
        else:
            rows.append(
                {
                    "model": name,
                    "table": site,
                    "contender": "ours exact",
                    "seconds": exact_s,
                    "cells": n_layers * n_pos,
                    "path": exact_df.attrs["path"],
                    "bitwise": bitwise,
                    "compared": compared,
                    "tail_positions": len(exact_df.attrs.get("tail_positions", [])),
                }
            )
            rows.append(
                {
                    "model": name,
                    "table": site,
                    "contender": "ours fast",
                    "seconds": fast_s,
                    "cells": n_layers * n_pos,
                    "path": fast_df.attrs["path"],
                    **extra_fast,
                }
            )
    # attribution patching: the whole resid_pre sweep from one forward and one backward
    attr_df, attr_s = timed(lambda: kd.attribution_sweep(model, clean, donor, site="resid_pre"))
    err = kd.attribution_error(ours["resid_pre", True][0], attr_df)
    worst = err["worst"].iloc[0]
    row(
        "resid_pre",
        "attribution (gradient estimate)",
        attr_s,
        tl_pre,
        pearson=err["pearson"],
        spearman=err["spearman"],
        max_metric_error=err["max_abs_error"],
        median_metric_error=err["median_abs_error"],
        worst_cell=f"layer {int(worst.layer)}, position {int(worst.position)}",
    )
    row("every site", "TL get_act_patch_block_every", tl_every, tl_every)
    for exact, label in ((True, "ours exact, 3 sites"), (False, "ours fast, 3 sites")):
        seconds = sum(ours[s, exact][1] for s in sites)
        row("every site", label, seconds, tl_every)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--n-pos", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1, help="prompt pairs per pass")
    parser.add_argument("--ref-cells", type=int, default=60, help="resid_post cells checked")
    parser.add_argument("--check-all", action="store_true", help="fast logits vs exact, all")
    parser.add_argument("--quick", action="store_true", help="tiny models, small: not a timing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.n_pos, args.ref_cells = ["tiny-llama", "tiny-gemma3"], 8, 8
    default_out = (
        Path(__file__).parent
        / "results"
        / ("patching_quick.json" if args.quick else "patching.json")
    )
    out = Path(args.out) if args.out else default_out
    from kvdirect_interp.study.provenance import cpu_name, git_state

    commit, dirty = git_state()
    run = {
        "commit": commit,
        "dirty": dirty,
        "machine": {
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "n_pos": args.n_pos,
        "batch": args.batch,
        "quick": args.quick,
    }
    rows = []
    for name in args.models:
        try:
            rows += bench_model(name, args.n_pos, args.batch, args.ref_cells, args.check_all)
        except kd.MissingModelPackage as err:
            print(f"skipped {name}: {err}")
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.to_string(index=False, float_format="{:.3g}".format))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": run, "rows": rows}, indent=1, default=str) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
