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

import kvdirect_interp as kd
from kvdirect_interp import experiments as ex

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
prompts = ex.load_data("prompts.json")["prompts"][:2]  # kept small: the notebook suite runs in CI
policies = {**ex.BASELINES, **ex.KVDIRECT_MODES}
table = ex.agreement_table(
    model, prompts, policies=policies, budgets=(8, 32), max_new_tokens=12, progress=False
)

# %%
# NBVAL_CHECK_OUTPUT
summary = (
    table.groupby(["policy", "budget"])
    .agg(
        token_match=("token_match", "mean"),
        kl_mean=("kl_mean", "mean"),
        bitwise=("logits_bitwise", "all"),
        bytes_held=("bytes_held", "mean"),
    )
    .reset_index()
)
with pd.option_context("display.float_format", "{:.3g}".format):
    print(summary.pivot(index="policy", columns="budget", values="token_match").to_string())

# %%
# NBVAL_CHECK_OUTPUT
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
# covers most of a short prompt. The comparison is not one of
# equal memory: on the x-axis of bytes held, KV-Direct (every_layer) holds more than the
# full cache.

# %%
# NBVAL_CHECK_OUTPUT
kvd = summary[summary.policy.str.startswith("KVDirect")]
base = summary[~summary.policy.str.startswith("KVDirect")]
rows = [
    ("5 KVDirect token match", f"{kvd.token_match.min():.0%} at every budget", "holds"),
    (
        "5 baselines fall to 5-28%",
        f"{base.token_match.min():.0%}-{base.token_match.max():.0%}",
        "holds" if base.token_match.max() <= 0.28 else "holds under conditions",
    ),
    (
        "5 equal-memory comparison",
        "KVDirect holds more bytes than the full cache",
        "holds under conditions",
    ),
]
print(verdict_table(rows).to_string(index=False))

# %%
assert (kvd.token_match == 1.0).all() and (kvd.kl_mean == 0.0).all() and kvd.bitwise.all()
assert base.token_match.max() < 1.0
ev = summary[summary.policy == "KVDirect[every_layer]"].bytes_held
assert (ev.values > table.fullkv_bytes.mean()).all()
