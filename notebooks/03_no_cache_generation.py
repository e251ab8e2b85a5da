# %% [markdown]
# # Claim 3: generating without a cache gives token-identical output
#
# > "Removing the cache and recomputing from scratch gives token-identical output under
# > greedy decoding on every model tested."
#
# **Method.** For two chat prompts, generate 32 tokens with the full K/V cache and with no
# cache (every step re-runs the whole sequence), greedy and with seeded sampling (same
# seed, same sampler). Compare tokens, find the first divergence, and measure the logit
# drift per step. The logit noise is the largest |cached - uncached| logit difference on
# steps with the same context (up to the first divergence): the fp noise of other GEMM
# shapes. Where the cached run's top-2 logit margin exceeds ten times that noise, both runs
# must pick the same argmax on any machine; at a smaller margin (a near-tie) the pick is
# the kernels' to make.

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
# two prompts: every uncached step re-runs the whole sequence (the notebook suite's budget)
prompts = [
    [{"role": "user", "content": c}]
    for c in ["Explain why the sky is blue.", "List three uses of a paperclip."]
]
samplings = {
    "greedy": kd.Sampling(),
    "sampled": kd.Sampling(do_sample=True, temperature=0.8, top_p=0.95, seed=0),
}
runs = ex.no_cache_runs(model, prompts, samplings=samplings, max_new_tokens=32)
noise = float(runs.noise.max())
greedy = runs[runs["mode"] == "greedy"]
v = vd.claim3(greedy, logit_noise=noise)  # claim 3 is about greedy decoding
runs = ex.decisive_steps(runs, v.numbers["near_tie_threshold"])

# %% [markdown]
# Checked below, because every machine must reproduce them: step 0 is the same computation
# with and without a cache (one forward pass over the prompt), so its logits are the same
# bits; and the greedy tokens are compared only on *decisive* steps, those whose cached
# top-2 logit margin exceeds 10 x the logit noise, counted from the start up to the first
# step that is not (after a near-tie the two contexts may differ). Sampled tokens depend on
# where each draw falls, not on a margin: they are printed with the CPU, unchecked.

# %%
# NBVAL_CHECK_OUTPUT
print("logits bitwise equal at step 0 of every run:", all(d[0] == 0.0 for d in runs.drift))
print("greedy tokens equal on every decisive step (top-2 margin > 10 x logit noise):")
print(runs[runs["mode"] == "greedy"][["prompt", "decisive_equal"]].to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
print(f"on this CPU ({CPU}): logit noise {noise:.2g}, near-tie threshold {10 * noise:.2g}")
cols = ["prompt", "mode", "token_match", "first_divergence", "bitwise_steps", "noise"]
print(runs[[*cols, "decisive_steps", "first_near_tie"]].to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
long = runs.explode("drift").reset_index(drop=True)
long["step"] = long.groupby(["prompt", "mode"]).cumcount()
px.line(
    long,
    x="step",
    y="drift",
    color="mode",
    line_group="prompt",
    log_y=True,
    title="max |logit(cache) - logit(no cache)| per step",
)

# %% [markdown]
# **Reading.** On the machines we used, tokens were identical for every prompt, greedy and
# sampled. The logits are not: the first step is the same computation (bitwise equal), and
# from the second step on the cached path computes one new row while the uncached path
# recomputes all rows, other GEMM shapes with other rounding (drift around 1e-5 to 1e-4).
# Token identity holds because no step lands on a near-tie; it is not a bitwise identity of
# the two computations.
#
# The verdict, from `verdicts.claim3` over the greedy runs: "holds" if every run is
# token-identical, "holds under conditions" if the runs diverge only at near-ties (fp noise
# deciding an argmax the model nearly tied), "fails" if a run diverges at a larger margin.
# Whether a near-tie flips depends on the kernels, so the verdict is printed with the CPU;
# what every machine must give (no divergence beyond the noise) is asserted.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"on this CPU ({CPU}):")
with pd.option_context("display.max_colwidth", None):
    display(vd.table([v]))
    display(vd.parts_table([v]))

# %%
dec = runs[runs["mode"] == "greedy"]
assert dec.decisive_equal.all(), "greedy tokens differ where the margin exceeds the noise"
assert all(d[0] == 0.0 for d in runs.drift) and 0 < noise < 1e-2
assert v.verdict != vd.FAILS and v.parts[1].held
if dec.first_near_tie.isna().all():  # no near-tie: every machine sees identical tokens
    assert v.verdict == vd.HOLDS

# %% [markdown]
# ## The full study (stored results)
# `kvdirect-interp study --size full --claims 3` generated 64 tokens with and without the
# cache for 16 prompts (the six of `prompts.json` and the first ten chat turns as
# one-message chats), greedy and with seeded sampling (seeds 0, 1, 2; temperature 1).
# Where a model's table is in `results/`, it is shown with the run that made it and judged
# by `verdicts.claim3` over the greedy runs, the logit noise being the largest drift over
# every stored run, as above; a model not yet studied says so.

# %%
# NBVAL_IGNORE_OUTPUT
from kvdirect_interp import results, study  # noqa: E402

stored = results.stored_tables(3, STUDIED)
for name, table in stored.items():
    print(
        table.groupby("mode")
        .agg(
            runs=("token_match", "size"),
            identical=("token_match", lambda s: int((s == 1.0).sum())),
            min_token_match=("token_match", "min"),
            max_drift=("noise", "max"),
        )
        .to_string()
    )
    steps = table.explode("drift").assign(drift=lambda d: d.drift.astype(float))
    steps["step"] = steps.groupby("unit_key").cumcount()
    spread = steps.groupby(["mode", "step"]).drift.agg(["median", "max"]).reset_index()
    spread = spread.melt(["mode", "step"], var_name="over runs", value_name="drift")
    px.line(
        spread[spread.step > 0],  # step 0 is the same computation: 0 drift, off a log axis
        x="step",
        y="drift",
        color="mode",
        line_dash="over runs",
        log_y=True,
        labels={"drift": "max |logit(cache) - logit(no cache)|", "step": "generated token"},
        title=f"{name}: logit drift per step, cached vs uncached (median and max over runs)",
    ).show()
    greedy, noise = results.claim3_runs(table)
    v = vd.claim3(greedy, logit_noise=noise)
    with pd.option_context("display.max_colwidth", None):
        display(vd.table([v]))
        display(vd.parts_table([v]))

# %%
# the stored verdicts follow from the stored rows
for table in stored.values():
    greedy, noise = results.claim3_runs(table)
    v = vd.claim3(greedy, logit_noise=noise)
    assert v.numbers["identical_runs"] == int((greedy.token_match == 1.0).sum())
    assert (v.verdict == vd.HOLDS) == bool((greedy.token_match == 1.0).all())
    assert noise == table.noise.max() and v.numbers["runs"] == len(greedy)

# %% [markdown]
# **A stored unit measured again.** The first prompt's greedy run is generated again here
# through the study's own measurement function and compared with its stored row: token
# match, first divergence, per-step token equality exactly, the logit noise within 1e-5.
# The noise is the kernels', so the row is asserted only on the kind of machine that made
# the table (same CPU, same threads); the tokens must match anywhere where no near-tie
# decided them (the decisive-step check above).

# %%
# NBVAL_IGNORE_OUTPUT
recheck = None
if MODELS[0] in stored:
    table = stored[MODELS[0]]
    recheck = study.recheck(model, MODELS[0], 3, table, sampling="greedy", prompt=["prompts", 0])
    print(f"same machine as the stored run: {results.same_machine(table)}")
    display(recheck)

# %%
if recheck is not None and results.same_machine(stored[MODELS[0]]):
    assert recheck.equal.all(), "the stored unit does not reproduce"
