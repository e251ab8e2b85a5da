# %% [markdown]
# # Claim 4: KV-Direct bounds memory
#
# > "KV-Direct checkpoints residual vectors (5 KB per token on Gemma 3-4B) instead of full
# > K/V (136 KB) ... over 20 conversation turns its peak memory stays at 42 MB while the
# > standard cache grows past 103 MB."
#
# **Method.** Bytes per token of every storage kind from the model's shape (checked against
# the actual tensors in the unit tests), for our models and for the paper's Gemma 3-4B
# shape. Then the 20-turn chat in `data/chat_20_turns.json` under the full cache and
# KV-Direct, with bytes held by kind after every turn and the process's peak RSS. Replies
# are capped at `NEW` = 8 tokens so the notebook suite stays within its CI budget on 2 CPU
# cores: all 20 user turns are processed in full, so the context still grows turn after
# turn (to about 700 tokens); raise `NEW` for longer replies (every KV-Direct step rebuilds
# the evicted tokens' K/V at every layer, which is what makes it slow here). The two
# re-prefill modes (`token_ids`, `first_layer`) run the first 4 turns only: they re-run
# every layer for all evicted tokens at every step; so does `min_bytes`, which on these
# grouped-query models keeps K/V on every layer, i.e. is the full cache.

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
# NBVAL_CHECK_OUTPUT
from kvdirect_interp.memory import GEMMA3_4B, Shape, bytes_per_token_table

shapes = [GEMMA3_4B]
for row in kd.list_models().itertuples():
    if row.kind == "packaged":
        shapes.append(Shape(row.name, row.n_layers, row.d_model, row.n_kv_heads, row.d_head, 4))
bpt = bytes_per_token_table(shapes)
print(bpt.pivot(index="model", columns="storage", values="bytes_per_token").to_string())

# %% [markdown]
# On Gemma 3-4B the paper's 5 KB is one residual vector per token (2,560 x 2 bytes), while
# its diagram rebuilds layer *l*'s K/V from *that layer's* residual: 34 of them, 170 KB,
# more than the 136 KB of K/V. On the grouped-query models here, the per-layer residuals
# cost 1.5x-3.5x the K/V they replace.

# %%
# NBVAL_IGNORE_OUTPUT
model = kd.load_model(MODELS[0])
TURNS = ex.load_data("chat_20_turns.json")["turns"]
WINDOW, NEW = 64, 8
policies = {"FullKV": kd.FullKV(), "KVDirect every_layer": kd.KVDirect(WINDOW, exact_shapes=False)}
chats = {
    name: ex.run_chat(model, pol, max_new_tokens=NEW, progress=False)
    for name, pol in policies.items()
}
# 4 turns only: the re-prefill modes redo every layer for the evicted tokens at every step,
# and min_bytes keeps K/V on every layer of a grouped-query model (it is the full cache)
short = {
    f"KVDirect {mode}": ex.run_chat(
        model,
        kd.KVDirect(WINDOW, checkpoint=mode, exact_shapes=False),
        turns=TURNS[:4],
        max_new_tokens=NEW,
        progress=False,
    )
    for mode in ("min_bytes", "token_ids", "first_layer")
}
timeline = pd.concat([df.assign(policy=name) for name, df in {**chats, **short}.items()])

# %%
# NBVAL_CHECK_OUTPUT
last = timeline.groupby("policy").tail(1).set_index("policy")
print(
    last[
        ["turn", "total_tokens", "kv_bytes", "residual_bytes", "token_ids_bytes", "held_bytes"]
    ].to_string()
)

# %%
# NBVAL_IGNORE_OUTPUT
melted = timeline.melt(
    id_vars=["policy", "turn"], value_vars=["kv_bytes", "residual_bytes", "held_bytes"]
)
px.line(
    melted,
    x="turn",
    y="value",
    color="policy",
    facet_col="variable",
    markers=True,
    title="bytes held after each turn",
)

# %%
# NBVAL_IGNORE_OUTPUT
px.line(
    timeline,
    x="turn",
    y="peak_rss_bytes",
    color="policy",
    markers=True,
    title="process peak RSS during each turn (includes the model: ~0.5-1 GB)",
)

# %% [markdown]
# **What "bounded" bounds.** Under KV-Direct the K/V held stay flat at the window:
# `WINDOW` tokens' worth, by the shape formula above (checked below). The checkpoints do not: per-layer residuals
# grow with every token and cost more than the K/V they replace on this model;
# `min_bytes` chooses K/V on every layer (grouped-query K/V are smaller than d_model), so it
# *is* the full cache; `token_ids` and `first_layer` hold 4 or d_model x 4 bytes per token
# but re-run every layer for the evicted tokens at every step (and materialise their K/V
# transiently). The process's peak RSS is dominated by the model itself at this scale.

# %%
# NBVAL_CHECK_OUTPUT
fk, ev = last.loc["FullKV"], last.loc["KVDirect every_layer"]
rows = [
    (
        "4 K/V bytes bounded by the window",
        f"{int(ev.kv_bytes):,} B vs {int(fk.kv_bytes):,} B full",
        "holds",
    ),
    (
        "4 total bytes held (every_layer)",
        f"{ev.held_bytes / fk.held_bytes:.2f}x the full cache",
        "fails",
    ),
    (
        "4 one vector per token (token_ids/first_layer)",
        "bounded bytes, re-prefill every step",
        "holds under conditions",
    ),
]
print(verdict_table(rows).to_string(index=False))

# %%
kv_per_token = int(
    bpt[(bpt.model == MODELS[0]) & (bpt.storage == "K/V (standard cache)")].bytes_per_token.iloc[0]
)
assert last.loc["KVDirect every_layer", "kv_bytes"] == WINDOW * kv_per_token
assert ev.held_bytes > fk.held_bytes  # residual checkpoints cost more than K/V on GQA
at4 = timeline[timeline.turn == 4].set_index("policy")
assert at4.loc["KVDirect min_bytes", "held_bytes"] == at4.loc["FullKV", "held_bytes"]
