# %% [markdown]
# # Claim 3: generating without a cache gives token-identical output
#
# > "Removing the cache and recomputing from scratch gives token-identical output under
# > greedy decoding on every model tested."
#
# **Method.** For two chat prompts, generate 32 tokens with the full K/V cache and with no
# cache (every step re-runs the whole sequence), greedy and with seeded sampling (same
# seed, same sampler).
# Compare tokens, find the first divergence, and measure the logit drift per step.

# %%
# NBVAL_IGNORE_OUTPUT
import warnings

warnings.filterwarnings("ignore")
import pandas as pd
import plotly.express as px
import plotly.io as pio
import torch

import kvdirect_interp as kd

pio.renderers.default = "plotly_mimetype"
pd.set_option("display.width", 160)
torch.set_num_threads(2)

# %%
# Parameters: the default packaged model always runs; add "gemma3-270m" or "qwen2.5-0.5b"
# (installed on demand, see README) to measure them too.
MODELS = ["smollm2-135m"]


# %%
def verdict_table(rows):
    return pd.DataFrame(rows, columns=["claim", "measured", "verdict"])


# %%
# NBVAL_IGNORE_OUTPUT
model = kd.load_model(MODELS[0])
# two prompts: every uncached step re-runs the whole sequence (the notebook suite's budget)
prompts = [
    [{"role": "user", "content": c}]
    for c in ["Explain why the sky is blue.", "List three uses of a paperclip."]
]
runs = []
for i, chat in enumerate(prompts):
    for mode, kw in [
        ("greedy", {}),
        ("sampled", dict(do_sample=True, temperature=0.8, top_p=0.95, seed=i)),
    ]:
        a = kd.generate(model, chat, max_new_tokens=32, keep_logits=True, **kw)
        b = kd.generate(model, chat, max_new_tokens=32, keep_logits=True, cache=kd.NoCache(), **kw)
        m = kd.token_match(a.new_tokens, b.new_tokens)
        drift = [float((x - y).abs().max()) for x, y in zip(a.logits, b.logits, strict=True)]
        runs.append(
            dict(
                prompt=i,
                mode=mode,
                token_match=m.fraction,
                first_divergence=m.first_divergence,
                bitwise_steps=sum(d == 0.0 for d in drift),
                max_drift=max(drift),
                drift=drift,
            )
        )
runs = pd.DataFrame(runs)

# %%
# NBVAL_CHECK_OUTPUT
print(
    runs[["prompt", "mode", "token_match", "first_divergence", "bitwise_steps"]].to_string(
        index=False
    )
)
print("max logit drift < 1e-3:", bool(runs.max_drift.max() < 1e-3))

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
# **Reading.** Tokens are identical for every prompt, greedy and sampled. The logits are not:
# the first step is the same computation (bitwise equal), and from the second step on the
# cached path computes one new row while the uncached path recomputes all rows, other GEMM
# shapes with other rounding (drift around 1e-5 to 1e-4). Token identity holds because no
# step lands on a near-tie; it is not a bitwise identity of the two computations.

# %%
# NBVAL_CHECK_OUTPUT
rows = [
    ("3 no-cache greedy/sampled tokens", f"{runs.token_match.mean():.0%} equal", "holds"),
    (
        "3 no-cache logits",
        f"bitwise on {int(runs.bitwise_steps.sum())}/{32 * len(runs)} steps",
        "holds under conditions",
    ),
]
print(verdict_table(rows).to_string(index=False))

# %%
assert (runs.token_match == 1.0).all()
assert runs.max_drift.max() > 0 and runs.max_drift.max() < 1e-2
