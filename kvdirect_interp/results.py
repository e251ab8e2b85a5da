"""The committed full study: `results/<model>/claim<N>.parquet` (written by
`kvdirect-interp study --size full`), read back for the notebooks, and the views of it that
the verdict functions take.

The tables are the repository's data, not the wheel's: they are looked for in
`$KVDIRECT_RESULTS`, else in the `results/` folder next to the package's checkout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import verdicts as vd
from .metrics import bootstrap_means, percentile_interval
from .policies import registry
from .policies.storage import bytes_per_token_table
from .verdicts import REFERENCE_POLICIES, REPLAY_MODES
from .verdicts.price import mode_of

PROVENANCE = ["date_utc", "cpu", "torch_threads", "git_commit", "package_version"]
# claim 5's per-unit metrics that claim5_summary gives with a bootstrap interval over prompts
CLAIM5_INTERVALS = ("token_match", "common_prefix", "kl_mean")


def results_dir() -> Path:
    """Where the full study's tables are: $KVDIRECT_RESULTS, else <checkout>/results."""
    env = os.environ.get("KVDIRECT_RESULTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "results"


def _folder(root: Path | str | None) -> Path:
    return Path(root) if root is not None else results_dir()


def load(model: str, claim: int, root: Path | str | None = None) -> pd.DataFrame | None:
    """The merged table of one claim on one model, or None where the study has not written
    it (a notebook then says so instead of showing a verdict)."""
    folder = _folder(root)
    for suffix, read in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = folder / model / f"claim{claim}{suffix}"
        if path.is_file():
            df = read(path)
            df.attrs["path"] = str(path)
            return df
    return None


def run_of(df: pd.DataFrame) -> str:
    """One line naming the run a stored table comes from: dates, CPU, threads, commit."""
    missing = [c for c in PROVENANCE if c not in df.columns]
    if missing:
        raise ValueError(f"the table lacks provenance columns {missing}; is it a study table?")
    dates = sorted(df.date_utc.str[:10].unique())
    span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    commits = ", ".join(sorted(c[:7] for c in df.git_commit.unique()))
    cpus = "; ".join(sorted(df.cpu.unique()))
    threads = ", ".join(str(t) for t in sorted(df.torch_threads.unique()))
    return f"run {span} on {cpus} ({threads} threads), commit {commits}, {len(df)} rows"


def claim6_tiers(df: pd.DataFrame) -> pd.DataFrame:
    """The claim-6 study table in long form, one row per (batch, evicted_tokens, tier):
    tier "ram" (a copy of the held tensors) and, where measured, "disk" (a file read with
    the page cache dropped first) and "gpu" (the rebuild on the GPU against a read from
    pinned host memory into it: `speed._gpu_tier`), each with rebuild_s, read_s and
    rebuild_over_read: the table `verdicts.claim6` takes. The decode-speed rows
    (`claim6_decode`) are left out."""
    keys = ["batch", "evicted_tokens"]
    df = df[df.rebuild_s.notna()]  # the rebuild rows: decode rows have none
    tiers = []
    for tier, rebuild, read in [
        ("ram", "rebuild_s", "read_s"),
        ("disk", "rebuild_s", "disk_read_s"),
        ("gpu", "gpu_rebuild_s", "h2d_read_s"),
    ]:
        if read in df.columns:
            rows = df[df[read].notna()]  # a study resumed on another machine may lack a tier
            rows = rows[[*keys, rebuild, read]].set_axis([*keys, "rebuild_s", "read_s"], axis=1)
            tiers.append(rows.assign(tier=tier))
    out = pd.concat(tiers, ignore_index=True)
    out["rebuild_over_read"] = out.rebuild_s / out.read_s
    return out


def claim6_decode(df: pd.DataFrame) -> pd.DataFrame:
    """Claim 6's end-to-end rows (`speed.decode_side_by_side`, FullKV first): per (policy,
    context) the prefill seconds, seconds per decode step, tokens/s with and without the
    prefill (medians over the rounds), decode_tok_s_min / _max over the rounds, bytes held
    and GFLOPs per step, with decode_vs_fullkv (median decode tokens/s over FullKV's at that
    context) and vs_fullkv_min / _max (that ratio's range within rounds, side by side).
    Empty where the stored table has no such rows."""
    if "measure" not in df.columns:
        return pd.DataFrame()
    rows = df[df["measure"] == "decode"].dropna(axis=1, how="all")  # the rebuild columns
    if rows.empty:
        return pd.DataFrame()
    counts = ["prompt_tokens", "context", "new_tokens", "budget", "bytes_held", "rounds"]
    rows = rows.astype({c: int for c in counts})  # floats in a table shared with NaN rows
    full = rows[rows.policy == "FullKV"].set_index("context").decode_tok_s
    rows["decode_vs_fullkv"] = rows.decode_tok_s / rows.context.map(full)
    rows = rows.rename(columns={"vs_first_min": "vs_fullkv_min", "vs_first_max": "vs_fullkv_max"})
    return rows.reset_index(drop=True)


# --- the stored tables as the verdict functions take them --------------------------------

REPORT = ["layer", "tensor", "shape", "reference", "bitwise_equal", "max_abs_err", "max_ulp"]


def claim1_reports(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """dtype -> the reconstruction rows of every stored prompt, in the report form that
    `verdicts.claim1` takes: a layer counts as bitwise at a shape only if it is so on every
    prompt and length."""
    return {str(dt): rows[REPORT] for dt, rows in df.groupby("dtype", sort=False)}


def claim2_inputs(df: pd.DataFrame) -> dict:
    """The keyword arguments of `verdicts.claim2` over the whole stored table: the largest
    whole-residual and single-position KL over every pair, layer and site."""
    return {
        "kl_whole_max": float(df.kl_whole.max()),
        "kl_single_position_max": float(df.kl_last.max()),
        "layers": int(df.layer.nunique()),
        "sites": sorted(df.site.unique()),
        "task_pairs": int(df.pair.nunique()),
    }


def claim3_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """(the greedy runs, the logit noise) for `verdicts.claim3`: the noise is the largest
    |cached - uncached| logit difference on same-context steps over every stored run,
    greedy and sampled, as notebook 03 takes it live; the claim is about greedy decoding."""
    runs = df.assign(run=df.prompt + " " + df["mode"])
    return runs[runs["mode"] == "greedy"], float(df.noise.max())


def claim4_turns(df: pd.DataFrame) -> pd.DataFrame:
    """The stored chat rows as `verdicts.claim4` takes them: transient_bytes (the turn's
    largest rebuild, `rebuilt_bytes_max`) and, for the re-prefill modes, the replay variant
    each unit ran (`replay`; units stored before the setting existed ran one-shot)."""

    settings = df.unit_settings.map(json.loads)
    replay = [
        s.get("replay", "one_shot") if mode_of(p) in REPLAY_MODES else None
        for p, s in zip(df.policy, settings, strict=True)
    ]
    return df.assign(transient_bytes=df.rebuilt_bytes_max, replay=replay)


def claim6_cost(df: pd.DataFrame | None, arch) -> pd.DataFrame | None:
    """Claim 6's decode rows as the verdicts' cost table (policy, context, flops_per_step,
    decode_tok_s: formula FLOPs and measured tokens/s, side by side with FullKV), or None
    where the model has no such rows. `arch`: the model's `cost.Arch` (`facts(name).arch`).

    FLOPs are a formula, not a measurement: FullKV's, NoCache's and each KV-Direct mode's are
    taken from today's formula (`policy.step_flops` at the row's last decode step), since
    the stored column used the one of the run's commit (before 2026-12-07 it counted the
    unembedding of replayed tokens, which no runner computes). The other rows keep their
    stored numbers: "SnapKV" in rows stored before then is the per-step rule."""
    rows = pd.DataFrame() if df is None else claim6_decode(df)
    if rows.empty:
        return None
    flops = rows.gflops_per_step * 1e9
    for i, r in rows.iterrows():
        if mode_of(r.policy) is not None or r.policy in ("FullKV", "NoCache"):
            policy = registry.make(r.policy, int(r.budget))
            # the last decode step: prompt + new - 2 tokens seen before the one it feeds
            seen = int(r.prompt_tokens + r.new_tokens - 2)
            flops[i] = policy.step_flops(arch, seen, prompt=int(r.prompt_tokens))
    cols = ["policy", "context", "flops_per_step", "decode_tok_s"]
    return rows.assign(flops_per_step=flops)[cols]


def claim5_source(df: pd.DataFrame, source: str = "long_prompts") -> pd.DataFrame:
    """The stored agreement rows of one prompt set: "long_prompts" (256-1,021 tokens; rows
    stored before the column existed) or "long_context" (4,000 tokens)."""
    got = df.get("source", pd.Series("long_prompts", index=df.index)).fillna("long_prompts")
    return df[got == source]


def claim5_rows(df: pd.DataFrame, budgets=None) -> pd.DataFrame:
    """The stored agreement rows of the long prompts at `budgets` (default: every budget
    stored). The plan's budget grid and the equal-memory budgets are both in the table;
    `claim5_equal_memory` gives the second as its own slice, and the long-context rows are
    `claim5_source(df, "long_context")`."""
    df = claim5_source(df)
    return df if budgets is None else df[df.budget.isin(list(budgets))]


def claim5_equal_memory(df: pd.DataFrame, shape) -> pd.DataFrame:
    """The equal-memory slice of the stored agreement rows, one label per KV-Direct
    configuration (`matched`, e.g. "first_layer w256"): that configuration's own rows, and
    every baseline's rows at the budget whose K/V bytes equal what it holds at the end of the
    run on that prompt (`study.plan.equal_memory_budgets`; a budget matching several
    configurations appears under each; a policy growing after the prompt, SnapKV, at the
    budget that ends there: `study.plan.baseline_budget`). `shape`: the model's
    `memory.Shape`."""
    from .study import CLAIM5_BUDGETS
    from .study.plan import baseline_budget, equal_memory_budgets

    df = claim5_source(df)
    new = df.unit_settings.map(lambda s: json.loads(s)["new_tokens"])
    parts = []
    for (_, n, n_new), rows in df.groupby([df.prompt, df.prompt_tokens, new]):
        configs = equal_memory_budgets(shape, int(n) + int(n_new) - 1, CLAIM5_BUDGETS)
        for (name, window), budget in configs.items():
            label = f"{mode_of(name)} w{window}"
            own = rows[(rows.policy == name) & (rows.budget == window)]
            base = rows[~rows.policy.str.startswith("KVDirect")]
            wanted = base.policy.map(lambda p, b=budget, k=int(n_new): baseline_budget(p, b, k))
            base = base[base.budget == wanted]
            if not base.empty:
                parts.append(pd.concat([own, base]).assign(matched=label))
    if not parts:
        return df.iloc[0:0].assign(matched=pd.Series(dtype=str))
    return pd.concat(parts, ignore_index=True)


def units_done(df: pd.DataFrame | None, planned) -> str:
    """ "k/n units" of a stored claim: n units planned (`study.plan`'s Units), k of them in
    the table (0 without one), to print next to its verdict: a verdict on part of a plan
    says so."""
    keys = {u.key for u in planned}
    done = 0 if df is None else len(keys & set(df.unit_key))
    return f"{done}/{len(keys)} units"


def _planned_only(df: pd.DataFrame, planned) -> pd.DataFrame:
    """The rows of the table's units that the plan still has: a table merged before its
    plan changed keeps rows of units the plan no longer runs, which nothing may judge."""
    keep = df[df.unit_key.isin({u.key for u in planned})]
    keep.attrs = df.attrs
    return keep


def facts(model: str, root: Path | str | None = None):
    """The `study.ModelFacts` stored with a model's tables (sites, shape, architecture,
    weight bytes: what plans, views and verdicts need, without loading the model), or None
    where the study has not run on it."""
    from .study import facts as model_facts

    return model_facts.read(_folder(root), model)


def stored_tables(
    claim: int, names, root: Path | str | None = None, size: str = "full"
) -> dict[str, pd.DataFrame]:
    """name -> stored table of `claim` (the rows of the `size` plan's units), for each model
    in `names` that has one, printing per model the run it comes from and its units done of
    the plan, or that it has no table yet: the header of every notebook's full-study
    section. Needs no model installed (the plan is counted on the stored `facts`)."""
    from .study import plan

    out = {}
    for name in names:
        df = load(name, claim, root)
        if df is None:
            print(f"{name}: no full-study table of claim {claim} in {_folder(root)} yet")
            continue
        planned = plan(name, _facts_for(name, root), claim, size)
        df = _planned_only(df, planned)
        if df.empty:
            print(f"{name}: the stored table of claim {claim} holds no unit of today's plan")
            continue
        print(f"{name}: {run_of(df)}; {units_done(df, planned)}")
        out[name] = df
    return out


def planned_table(
    name: str, claim: int, root: Path | str | None = None, size: str = "full"
) -> pd.DataFrame | None:
    """The stored table of `claim` on model `name`, the rows of the `size` plan's units
    only (None where there is none): what the verdicts judge, quietly (`stored_tables`
    prints the run)."""
    from .study import plan

    df = load(name, claim, root)
    if df is None:
        return None
    df = _planned_only(df, plan(name, _facts_for(name, root), claim, size))
    return None if df.empty else df


def _facts_for(name: str, root):
    found = facts(name, root)
    if found is None:
        raise ValueError(
            f"{_folder(root) / name} has tables but no model.json; rerun "
            f"`kvdirect-interp study --model {name} --size full --merge` to write it"
        )
    return found


def same_machine(df: pd.DataFrame) -> bool:
    """Whether this process runs on the kind of machine the stored table was measured on
    (same CPU name and torch thread count): kernel-dependent bits (one-token rebuilds,
    fp noise, near-tie argmaxes) can only be expected to repeat there."""
    import torch

    from .study.provenance import cpu_name

    return set(df.cpu) == {cpu_name()} and set(df.torch_threads) == {torch.get_num_threads()}


def claim5_summary(df: pd.DataFrame, *, level: float = 0.95, group: str = "budget") -> pd.DataFrame:
    """Per (policy, `group`: "budget", or "matched" on the equal-memory slice): prompts, then
    token match, first divergence (common prefix), mean KL per step under teacher forcing
    and, where every row of the group stored it, teacher-forced top-1 agreement
    (`forced_top1`; NaN otherwise), each as its mean over prompts with a seeded percentile
    bootstrap interval (`<metric>_low`, `<metric>_high`; resampled with the same draws of
    prompts), then bytes held and the full cache's (means over prompts) and bytes held as a
    share of FullKV's. One prompt has no interval (NaN bounds)."""

    rows = []
    for (policy, key), g in df.groupby(["policy", group], sort=False):
        metrics = list(CLAIM5_INTERVALS)
        if "forced_top1" in g.columns and g.forced_top1.notna().all():
            metrics.append("forced_top1")
        values = g[metrics].to_numpy(dtype=np.float64).T  # [metrics, prompts]
        low, high = percentile_interval(bootstrap_means(values), level)
        key = int(key) if group == "budget" else key
        row = {"policy": policy, group: key, "prompts": int(g.prompt.nunique())}
        for metric in (*CLAIM5_INTERVALS, "forced_top1"):
            row |= {metric: np.nan, f"{metric}_low": np.nan, f"{metric}_high": np.nan}
        for i, metric in enumerate(metrics):
            row |= {
                metric: float(values[i].mean()),
                f"{metric}_low": float(low[i]),
                f"{metric}_high": float(high[i]),
            }
        row |= {
            "bytes_held": float(g.bytes_held.mean()),
            "fullkv_bytes": float(g.fullkv_bytes.mean()),
        }
        rows.append(row)
    out = pd.DataFrame(rows)
    out["vs_fullkv"] = out.bytes_held / out.fullkv_bytes
    return out.sort_values(["policy", group], ignore_index=True)


def claim5_cost(df: pd.DataFrame, arch) -> pd.DataFrame:
    """The stored agreement rows with `context` (tokens seen at the run's last decode step:
    the prompt plus the unit's new tokens but the last) and `flops_per_step` there, by each
    policy's own formula (`policy.step_flops`, cost.py; SnapKV's cache grows past its budget
    after the prompt, so the prompt's length is passed). `arch`: `cost.Arch.of(model)`, or
    a stored study's `facts(name).arch`."""
    import json

    new = df.unit_settings.map(lambda s: json.loads(s)["new_tokens"])
    context = df.prompt_tokens + new - 1
    flops = [
        registry.make(p, int(b)).step_flops(arch, int(c), prompt=int(n))
        for p, b, c, n in zip(df.policy, df.budget, context, df.prompt_tokens, strict=True)
    ]
    return df.assign(context=context, flops_per_step=flops)


def judged(claim: int, df: pd.DataFrame, model, cost=None) -> list[tuple[str, object]]:
    """[(slice, Verdict)] of one stored claim table: which view each verdict function takes
    (claim 1 per dtype, claim 4 on held + transient bytes per replay variant, claim 5 at
    equal memory and on the budget grid, each with 95% intervals, claim 6 per storage tier,
    ...). A table lacking what its verdict needs raises ValueError naming it. `model`: the
    loaded model or its stored `facts` (claims 4 and 5 need its shape); `cost`: the model's
    `claim6_cost` (the price claims 4 and 5 carry; None: named without numbers)."""
    from .study import CLAIM5_BUDGETS
    from .study.facts import facts_of

    if claim == 1:
        return [(dtype, vd.claim1(report)) for dtype, report in claim1_reports(df).items()]
    if claim == 2:
        return [("every pair, layer and site", vd.claim2(**claim2_inputs(df)))]
    if claim == 3:
        greedy, noise = claim3_runs(df)
        return [("greedy", vd.claim3(greedy, logit_noise=noise))]
    if claim == 4:
        shape = facts_of(model).shape
        return [
            (
                "20-turn chat",
                vd.claim4(claim4_turns(df), bytes_per_token_table([shape]), cost=cost),
            )
        ]
    if claim == 5:
        out = []
        equal = claim5_equal_memory(df, facts_of(model).shape)
        if not equal.empty:
            iv = claim5_summary(claim5_baselines(equal), group="matched")
            out.append(("equal memory", vd.claim5(equal, iv, group="matched", cost=cost)))
        grid = claim5_rows(df, CLAIM5_BUDGETS)
        iv = claim5_summary(claim5_baselines(grid))
        out.append(("budget grid", vd.claim5(grid, iv, cost=cost)))
        long = claim5_source(df, "long_context")
        if not claim5_baselines(long).empty and long.policy.str.startswith("KVDirect").any():
            iv = claim5_summary(claim5_baselines(long))
            out.append(("long context", vd.claim5(long, iv, cost=cost)))
        return out
    if claim == 6:
        tiers = claim6_tiers(df)
        return [(t, vd.claim6(tiers[tiers.tier == t])) for t in tiers.tier.unique()]
    raise ValueError(f"unknown claim {claim!r}; accepted: 1-6")


def claim5_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """The eviction baselines' rows of an agreement table (neither KV-Direct nor FullKV /
    NoCache): the rows whose intervals `verdicts.claim5` judges."""

    return df[~df.policy.str.startswith("KVDirect") & ~df.policy.isin(REFERENCE_POLICIES)]


def stored_verdict_rows(
    model_name: str, model=None, root: Path | str | None = None, size: str = "full"
) -> list[dict]:
    """Every verdict the stored tables of one model support (`judged`), one dict per (claim,
    slice): claim, slice, units (done of the `size` plan), verdict (the `Verdict`, or None)
    and note (why there is none: not studied yet, or what the table lacks). `model`: the
    loaded model or its facts (the plans and claims 4-5 need its shape); default: the
    stored `facts`. Rows of units the plan no longer has are left out; the price of claims
    4 and 5 comes from the model's stored claim-6 decode rows (`claim6_cost`)."""
    from .study import CLAIMS, plan
    from .study.facts import facts_of

    # taken once: each claim's plan and claims 4-5's verdicts read them
    model = _facts_for(model_name, root) if model is None else facts_of(model, model_name)
    cost = claim6_cost(load(model_name, 6, root), model.arch)
    rows = []
    for claim in CLAIMS:
        planned = plan(model_name, model, claim, size)
        df = load(model_name, claim, root)
        df = None if df is None else _planned_only(df, planned)
        base = {"claim": claim, "units": units_done(df, planned), "slice": "", "verdict": None}
        if df is None or df.empty:
            rows.append({**base, "note": "not studied yet"})
            continue
        try:
            found = judged(claim, df, model, cost)
        except ValueError as err:  # a partial table: say what is missing
            rows.append({**base, "note": f"not judged: {err}"})
            continue
        rows += [{**base, "slice": name, "verdict": v, "note": ""} for name, v in found]
    return rows


def stored_verdicts(
    model_name: str, model=None, root: Path | str | None = None, size: str = "full"
) -> pd.DataFrame:
    """`stored_verdict_rows` as a table: claim, slice, units, verdict, price, measured (the
    note where there is no verdict)."""
    rows = [
        {
            "claim": r["claim"],
            "slice": r["slice"],
            "units": r["units"],
            "verdict": None if r["verdict"] is None else r["verdict"].verdict,
            "price": "" if r["verdict"] is None else r["verdict"].price,
            "measured": r["note"] if r["verdict"] is None else r["verdict"].measured,
        }
        for r in stored_verdict_rows(model_name, model, root, size)
    ]
    return pd.DataFrame(rows, columns=["claim", "slice", "units", "verdict", "price", "measured"])
