# %% [markdown]
# # Claim 5: 100% token match at every budget, where eviction baselines fall to 5-28%
#
# > "Against H2O, StreamingLLM, SnapKV, TOVA and window-only eviction, KV-Direct keeps 100%
# > token match at every cache budget; the baselines fall to 5-28%."
#
# **Method.** For the first two prompts in `data/prompts.json` and K/V budgets of 8 and 32
# tokens, generate 12 tokens greedily under every policy and compare with the full cache:
# token match of the free-running output, and D_KL(full || policy) per step with the policy
# fed the full cache's tokens. Where a policy's own greedy choice is the full cache's token
# at every step, that teacher-forced run *is* its free run and is not repeated. Bytes held
# are shown next to the budget: KV-Direct's budget counts K/V only.

# %%
# NBVAL_IGNORE_OUTPUT
import warnings

warnings.filterwarnings("ignore")
import pandas as pd
import plotly.express as px
import plotly.io as pio
import torch
from IPython.display import display

import kvdirect_interp as kd
from kvdirect_interp import experiments as ex
from kvdirect_interp import results
from kvdirect_interp import verdicts as vd

pio.renderers.default = "plotly_mimetype"
pd.set_option("display.width", 160)
torch.set_num_threads(2)

# %%
# Parameters: the default packaged model always runs; add "gemma3-270m" or "qwen2.5-0.5b"
# (installed on demand, see README) to measure them too.
MODELS = ["smollm2-135m"]
# the packaged models whose full study is shown from results/ (none needs installing)
STUDIED = ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"]


# %%
CPU = f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


# %%
# NBVAL_IGNORE_OUTPUT
model = kd.load_model(MODELS[0])
prompts = ex.load_data("prompts.json")["prompts"][:2]  # kept small: the notebook suite runs in CI
policies = {**ex.BASELINES, **ex.KVDIRECT_MODES}
table = ex.agreement_table(
    model, prompts, policies=policies, budgets=(8, 32), max_new_tokens=12, progress=False
)
baseline_rows = table[table.policy.isin(list(ex.BASELINES))]
v = vd.claim5(table, results.claim5_summary(baseline_rows))
summary = (
    table.groupby(["policy", "budget"])
    .agg(
        token_match=("token_match", "mean"),
        kl_mean=("kl_mean", "mean"),
        bitwise=("logits_bitwise", "all"),
        bytes_held=("bytes_held", "mean"),
        fullkv_bytes=("fullkv_bytes", "mean"),
    )
    .reset_index()
)
kvd = summary[summary.policy.str.startswith("KVDirect")]
base = summary[~summary.policy.str.startswith("KVDirect")]

# %% [markdown]
# Checked below, because every machine must reproduce them: KV-Direct's logits are FullKV's
# bits at every step (each evicted token is rebuilt with the GEMM shape that first computed
# it), so its tokens are FullKV's whatever the kernels, and its comparison needs no margin;
# and the bytes each policy holds, which follow from the budget and the token counts. The
# baselines' token match and KL compare free-running greedy tokens, and a near-tie in
# either run can go another way on other kernels: they are printed with the CPU, unchecked.

# %%
# NBVAL_CHECK_OUTPUT
print("KV-Direct vs FullKV, every mode and budget (logits bitwise: tokens equal everywhere):")
print(kvd[["policy", "budget", "token_match", "kl_mean", "bitwise"]].to_string(index=False))
held = summary.assign(vs_fullkv=summary.bytes_held / summary.fullkv_bytes)
with pd.option_context("display.float_format", "{:.3g}".format):
    print("\nbytes held after the last step / FullKV's:")
    print(held.pivot(index="policy", columns="budget", values="vs_fullkv").to_string())

# %%
# NBVAL_IGNORE_OUTPUT
print(f"on this CPU ({CPU}): token match with FullKV (free-running greedy), then mean KL")
with pd.option_context("display.float_format", "{:.3g}".format):
    print(summary.pivot(index="policy", columns="budget", values="token_match").to_string())
with pd.option_context("display.float_format", "{:.2g}".format):
    print(summary.pivot(index="policy", columns="budget", values="kl_mean").to_string())

# %%
# NBVAL_IGNORE_OUTPUT
px.line(
    summary,
    x="budget",
    y="token_match",
    color="policy",
    markers=True,
    title="token match with the full cache vs K/V budget",
)

# %%
# NBVAL_IGNORE_OUTPUT
px.line(
    summary,
    x="budget",
    y="kl_mean",
    color="policy",
    markers=True,
    title="mean D_KL(full || policy) per step vs K/V budget (KVDirect: exactly 0)",
)

# %%
# NBVAL_IGNORE_OUTPUT
px.scatter(
    summary,
    x="bytes_held",
    y="token_match",
    color="policy",
    symbol="budget",
    log_x=True,
    title="token match vs bytes actually held",
)

# %% [markdown]
# **Reading.** KV-Direct matches the full cache token for token with KL exactly 0 at every
# budget, and its logits are the same bits: it evicts no information, only changes where the
# K/V come from. The baselines drop information and diverge: near the paper's 5-28% when
# the budget is a small part of the context, higher (up to about half) when the budget
# covers most of a short prompt. The comparison is not one of equal memory: `every_layer`
# holds more bytes than the full cache, and `min_bytes` keeps K/V on every layer of a
# grouped-query model (it *is* the full cache); only `first_layer` and `token_ids` hold
# fewer, at the price of a re-prefill at every step.
#
# The verdict, from `verdicts.claim5`, weighs both halves of the claim: "KV-Direct 100% at
# every budget" (every KV-Direct row 100%, and at least one row holding fewer bytes than
# FullKV; modes that never do are named as no evidence) and "baselines fall to 5-28%",
# judged on the 95% interval of each baseline's mean token match over prompts at every
# budget: held where every interval lies at or below 28%, refuted where one lies above, and
# "not settled" otherwise. Its headline carries the price of KV-Direct's 100% (which modes
# give it at fewer bytes, at how many times FullKV's compute). The first part is
# machine-independent and checked; the second compares free-running tokens, so the verdict
# is printed with the CPU.

# %%
# NBVAL_CHECK_OUTPUT
print(vd.parts_table([v])[["part", "paper", "held"]].iloc[:1].to_string(index=False))
print("KV-Direct modes holding >= FullKV's bytes in every row:", v.numbers["modes_without_saving"])

# %%
# NBVAL_IGNORE_OUTPUT
print(f"on this CPU ({CPU}):")
with pd.option_context("display.max_colwidth", None):
    display(vd.table([v]))
    display(vd.parts_table([v]))

# %%
assert (kvd.token_match == 1.0).all() and (kvd.kl_mean == 0.0).all() and kvd.bitwise.all()
assert v.parts[0].held and v.verdict != vd.FAILS
assert v.numbers["modes_without_saving"] == ["KVDirect[every_layer]", "KVDirect[min_bytes]"]
assert base.token_match.max() < 1.0

# %% [markdown]
# **Per KV head or shared.** H2O and SnapKV select per KV head by default, as their
# authors' code does (query heads' scores averaged within each grouped-query group, as
# kvpress does); `per_head=False` keeps one set of tokens per layer for all heads, which is
# what this project's baselines did before. The same two prompts and budgets, both ways:
# the bytes are the same, what is kept differs (on a model with one KV head, Gemma 3 270M,
# the two are the same policy).

# %%
# NBVAL_IGNORE_OUTPUT
from dataclasses import replace  # noqa: E402

heads = ex.agreement_table(
    model,
    prompts,
    policies={  # the registry's settings
        **{name: ex.BASELINES[name] for name in ("H2O", "SnapKV")},
        **{
            f"{name} shared": lambda b, name=name: replace(ex.BASELINES[name](b), per_head=False)
            for name in ("H2O", "SnapKV")
        },
    },
    budgets=(8, 32),
    max_new_tokens=12,
    progress=False,
)
print(f"on this CPU ({CPU}): per KV head (as published) vs one shared set per layer")
with pd.option_context("display.float_format", "{:.3g}".format):
    print(
        heads.groupby(["policy", "budget"])[["token_match", "kl_mean"]]
        .mean()
        .unstack("budget")
        .to_string()
    )

# %%
# the per-head runs are the baselines above, bit for bit; sharing changes what is kept, not
# how much
per_head = heads[heads.policy.isin(["H2O", "SnapKV"])].reset_index(drop=True)
same = table[table.policy.isin(["H2O", "SnapKV"])].reset_index(drop=True)
cols = ["prompt", "policy", "budget", "token_match", "kl_mean", "bytes_held"]
pd.testing.assert_frame_equal(
    per_head.sort_values(cols[:3]).reset_index(drop=True)[cols],
    same.sort_values(cols[:3]).reset_index(drop=True)[cols],
)
kind = heads.policy.str.removesuffix(" shared")  # SnapKV grows after the prompt, H2O does not
assert (heads.groupby([kind, "prompt", "budget"]).bytes_held.nunique() == 1).all()

# %% [markdown]
# ## The full study (stored results)
# `kvdirect-interp study --size full --claims 5` ran 16 prompts of 256-1,021 tokens (our own
# texts in `data/long_prompts.json`, text i cut to 256 + 51 i tokens), budgets 16, 32, 64,
# 128 and 256, 48 new tokens, every baseline (H2O and SnapKV per KV head, as published) and
# the rebuild modes (every_layer, min_bytes); the re-prefill modes, about 10x slower per step
# and FullKV's tokens by test, on prompts 0 and 15 at budgets 16 and 256. At equal memory, on
# the first 8 prompts, every baseline also ran at the K/V budget whose bytes equal what each
# KV-Direct mode holds at the end of the run (`memory.held_after`, equal to every stored
# KV-Direct row's bytes; where that is less than the full cache). Intervals are 95%
# bootstrap intervals of the mean over prompts. Where a model's table is in `results/`, it
# is shown with the run that made it and judged by `verdicts.claim5` twice: at equal memory
# (each baseline given the bytes a KV-Direct configuration held, per prompt: the fair
# axis) and on the budget grid, both on 95% intervals; a table judged on part of its plan
# says how many units it rests on.

# %%
# NBVAL_IGNORE_OUTPUT
from kvdirect_interp import study  # noqa: E402


def with_bars(summ, metric="token_match"):
    return summ.assign(
        plus=summ[f"{metric}_high"] - summ[metric],
        minus=summ[metric] - summ[f"{metric}_low"],
        mb_held=summ.bytes_held / 1e6,
    )


def with_intervals(summ, metric, fmt):
    """policy x budget: "mean [low, high]" (a mean alone where one prompt has no interval)."""

    def cell(r):
        if r.prompts < 2:
            return f"{r[metric]:{fmt}}"
        return f"{r[metric]:{fmt}} [{r[f'{metric}_low']:{fmt}}, {r[f'{metric}_high']:{fmt}}]"

    cells = summ.assign(cell=summ.apply(cell, axis=1))
    return cells.pivot(index="policy", columns="budget", values="cell").fillna("")


stored = results.stored_tables(5, STUDIED)
for name, table in stored.items():
    facts = results.facts(name)  # the model's shape and sizes, stored with its tables
    grid = results.claim5_rows(table, study.CLAIM5_BUDGETS)
    summ = with_bars(results.claim5_summary(grid))
    px.line(
        summ,
        x="budget",
        y="token_match",
        error_y="plus",
        error_y_minus="minus",
        color="policy",
        markers=True,
        log_x=True,
        labels={"budget": "K/V budget (tokens)", "token_match": "token match with FullKV"},
        title=f"{name}: token match with the full cache vs K/V budget (48 tokens, 95% CI)",
    ).update_xaxes(tickvals=study.CLAIM5_BUDGETS).show()
    kl = with_bars(summ[~summ.policy.str.startswith("KVDirect")], "kl_mean")
    px.line(
        kl,
        x="budget",
        y="kl_mean",
        error_y="plus",
        error_y_minus="minus",
        color="policy",
        markers=True,
        log_x=True,
        log_y=True,
        labels={"budget": "K/V budget (tokens)", "kl_mean": "mean D_KL per step (nats)"},
        title=f"{name}: D_KL(full || baseline) per step under teacher forcing vs K/V budget"
        " (95% CI; KV-Direct: exactly 0)",
    ).update_xaxes(tickvals=study.CLAIM5_BUDGETS).show()
    every = with_bars(results.claim5_summary(table))  # the grid and the equal-memory budgets
    px.scatter(
        every,
        x="mb_held",
        y="token_match",
        error_y="plus",
        error_y_minus="minus",
        color="policy",
        hover_data=["budget", "prompts"],
        log_x=True,
        labels={"mb_held": "bytes held at the last step (MB)", "token_match": "token match"},
        title=f"{name}: token match vs memory actually held (every budget, equal-memory ones"
        " included)",
    ).show()
    cost = results.claim5_cost(table, facts.arch)
    front = cost.groupby(["policy", "budget"], as_index=False)[
        ["bytes_held", "flops_per_step"]
    ].mean()
    px.scatter(
        front.assign(mb=front.bytes_held / 1e6, gflops=front.flops_per_step / 1e9),
        x="mb",
        y="gflops",
        color="policy",
        hover_data=["budget"],
        log_x=True,
        log_y=True,
        labels={"mb": "bytes held (MB)", "gflops": "GFLOPs per decode step (formula)"},
        title=f"{name}: memory held vs compute per step at the last step, every policy and budget",
    ).show()
    for metric, what, fmt in [
        ("token_match", "token match", ".2f"),
        ("common_prefix", "first divergence (tokens before it)", ".1f"),
        ("kl_mean", "mean D_KL per step under teacher forcing (nats)", ".2g"),
    ]:
        print(f"{what}, mean over prompts [95% CI], budget grid:")
        print(with_intervals(summ, metric, fmt).to_string())
    if grid.get("forced_top1", pd.Series(dtype=float)).notna().any():
        top1 = with_bars(summ.dropna(subset=["forced_top1"]), "forced_top1")
        px.line(
            top1,
            x="budget",
            y="forced_top1",
            error_y="plus",
            error_y_minus="minus",
            color="policy",
            markers=True,
            log_x=True,
            labels={"budget": "K/V budget (tokens)", "forced_top1": "teacher-forced top-1"},
            title=f"{name}: teacher-forced top-1 agreement with the full cache vs K/V budget"
            " (95% CI; units run since it is stored)",
        ).update_xaxes(tickvals=study.CLAIM5_BUDGETS).show()
    equal = results.claim5_equal_memory(table, facts.shape)
    print("token match at equal memory (baselines given KV-Direct's bytes), mean [95% CI]:")
    eq = results.claim5_summary(equal, group="matched").rename(columns={"matched": "budget"})
    print(with_intervals(eq, "token_match", ".2f").to_string())
    cost6 = results.claim6_cost(results.load(name, 6), facts.arch)
    for part, v in results.judged(5, table, facts, cost6):
        print(f"  {part}: {v.headline()}")
        with pd.option_context("display.max_colwidth", None):
            display(vd.table([v]))
            display(vd.parts_table([v]))

# %% [markdown]
# **Reading.** On the budget grid every KV-Direct row matches the full cache token for
# token (its exact-shape rebuild gives FullKV's logits bit for bit), but on this
# grouped-query model the two rebuild modes hold at least the full cache's bytes: only the
# re-prefill modes show the claim with memory saved, at a re-prefill per step (the FLOPs
# plot). The baselines fall to a few percent at small budgets and do better where the
# budget covers much of the sequence: the verdict's second part is decided there. The
# bytes-held plot puts every policy on one memory axis, equal-memory budgets included. A
# table judged on part of its plan says how many units it rests on.

# %%
# the stored verdicts follow from the stored rows
for name, table in stored.items():
    judged = dict(results.judged(5, table, results.facts(name)))
    grid = results.claim5_rows(table, study.CLAIM5_BUDGETS)
    v = judged["budget grid"]
    kvd_rows = grid[grid.policy.str.startswith("KVDirect")]
    assert v.numbers["kvdirect_min_token_match"] == kvd_rows.token_match.min()
    assert set(grid.budget) <= set(study.CLAIM5_BUDGETS)
    # the equal-memory slice judges every baseline at the bytes some KV-Direct mode held
    equal = results.claim5_equal_memory(table, results.facts(name).shape)
    assert (
        judged["equal memory"].numbers["kvdirect_rows_fewer_bytes"]
        == (equal.policy.str.startswith("KVDirect") & (equal.bytes_held < equal.fullkv_bytes)).sum()
    )

# %% [markdown]
# **Stored units measured again.** Prompt 0 at budget 16 under H2O and under
# `KVDirect[every_layer]` is generated again here through the study's own measurement
# function and compared with its stored rows: token match, first divergence, bytes and the
# bitwise flag exactly, KL within 1e-4. KV-Direct's tokens are FullKV's on any machine; a
# baseline's free run can turn at a near-tie on other kernels, so its row is asserted only on
# the kind of machine that measured that unit (same CPU, same threads).

# %%
# NBVAL_IGNORE_OUTPUT
rechecked, h2o_here = {}, False
if MODELS[0] in stored:
    table = stored[MODELS[0]]
    for policy in ("H2O", "KVDirect[every_layer]"):
        rechecked[policy] = study.recheck(
            model, MODELS[0], 5, table, policy=policy, prompt=0, budget=16
        )
    # the machine that measured this unit (a table's units may come from several)
    h2o_here = results.same_machine(study.stored_unit(table, policy="H2O", prompt=0, budget=16)[1])
    print(f"same kind of machine as the stored H2O unit's: {h2o_here}")
    display(pd.concat([c.assign(policy=k) for k, c in rechecked.items()], ignore_index=True))

# %%
if rechecked:
    assert rechecked["KVDirect[every_layer]"].equal.all(), "KV-Direct's stored row differs"
    if h2o_here:
        assert rechecked["H2O"].equal.all(), "the stored H2O unit does not reproduce"
