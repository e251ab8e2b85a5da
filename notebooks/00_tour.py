# %% [markdown]
# # A tour of kvdirect_interp
#
# Load a real model offline, capture and patch the residual stream, rebuild K/V from it, and
# generate under the full cache and under KV-Direct: the whole API in a few minutes. Every
# claim of *The Residual Stream Is All You Need* (arXiv 2603.19664) has its own notebook.

# %%
# NBVAL_IGNORE_OUTPUT
import warnings

warnings.filterwarnings("ignore")
import pandas as pd
import plotly.io as pio
import torch

import kvdirect_interp as kd

pio.renderers.default = "plotly_mimetype"
pd.set_option("display.width", 160)
torch.set_num_threads(2)

# %%
# NBVAL_IGNORE_OUTPUT
model = kd.load_model("smollm2-135m")  # GGUF from a PyPI wheel, sha256-checked, no hub
kd.list_models()

# %% [markdown]
# ## Which path a forward pass takes
# With nothing hooked, forward passes run an unwrapped HF module tree over the bridge's own
# tensors (probed once, bitwise equal to the bridge); any other hook sends them through the
# bridge. `kd.fast_path(model)` says which path runs and why;
# `kd.forward(model, tokens, path="bridge")` forces the reference path.

# %%
# NBVAL_CHECK_OUTPUT
fp = kd.fast_path(model)
print("fast path available:", fp.status()["fast_path"], "-", fp.status()["reason"])
tokens = kd.to_tokens(model, "The capital of France is")
fast = kd.forward(model, tokens)
print("this forward pass:", fp.last.path, "-", fp.last.reason)
slow = kd.forward(model, tokens, path="bridge")
print("forced:", fp.last.path, "| same logits bits:", torch.equal(fast, slow))

# %% [markdown]
# ## Capture and patch
# `capture_residuals` keeps `resid_pre/mid/post` at every layer; `patch_residual` swaps a donor's residual in.

# %%
# NBVAL_CHECK_OUTPUT
clean = "The capital of France is Paris, and the capital of Italy is"
donor = "The capital of Spain is Madrid, and the capital of Japan is"
trace = kd.capture_residuals(model, donor, sites=("resid_pre", "resid_post"))
print("resid_pre:", tuple(trace.resid["resid_pre"].shape), "(layers, batch, pos, d_model)")
patched = kd.patch_residual(model, clean, layer=12, source=trace)
print("max KL(donor || patched) at layer 12:", float(kd.kl_divergence(trace.logits, patched).max()))
top = lambda logits: model.tokenizer.decode([int(logits[0, -1].argmax())])
print("clean ->", repr(top(model(model.to_tokens(clean)))), "| patched ->", repr(top(patched)))

# %% [markdown]
# ## Patching sweeps for analysis code
# `patch_sweep` patches the donor's residual into the clean run one position at a time at
# each layer. In its exact mode every patched pass starts at the patched layer from the clean
# run's captured residuals (the same shapes, so the same bits as one whole patched forward
# pass per cell; `df.attrs` says which path ran). Three prompt pairs in one batch, the
# metric a logit difference (the donor's answer minus the clean prompt's), every 5th layer;
# `sweep_summary` gives each cell's mean over the pairs with a 95% bootstrap interval and
# the normalised recovery (0: the clean run's value, 1: the donor's).

# %%
# NBVAL_CHECK_OUTPUT
cleans = [
    "The capital of France is Paris, and the capital of Italy is",
    "The capital of Germany is Berlin, and the capital of Egypt is",
    "The capital of Greece is Athens, and the capital of Kenya is",
]
donors = [
    "The capital of Spain is Madrid, and the capital of Japan is",
    "The capital of Russia is Moscow, and the capital of China is",
    "The capital of Canada is Ottawa, and the capital of Peru is",
]
ids = lambda words: [model.to_single_token(w) for w in words]  # noqa: E731
metric = kd.LogitDiff(
    answer=ids([" Tokyo", " Beijing", " Lima"]), distractor=ids([" Rome", " Cairo", " Nairobi"])
)
layers = list(range(0, model.cfg.n_layers, 5))
sweep = kd.patch_sweep(
    model, cleans, donors, metric=metric, per_position=True, layers=layers, progress=False
)
print("path:", sweep.attrs["path"], "-", sweep.attrs["reason"])
summary = kd.sweep_summary(sweep)
last = summary[summary.position == summary.position.max()]  # the last token patched
rounded = last.assign(recovery=last.recovery.round(1) + 0.0)  # + 0.0: no "-0.0"
print(rounded[["layer", "n_pairs", "recovery"]].to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
import plotly.graph_objects as go  # noqa: E402

from kvdirect_interp.explore import position_labels  # noqa: E402

labels = position_labels(model, cleans[0])
grid = summary.pivot(index="layer", columns="position", values="recovery")
fig = go.Figure(
    go.Heatmap(
        z=grid.values,
        x=grid.columns,
        y=grid.index,
        colorscale="RdBu",
        zmid=0,
        colorbar=dict(title="recovery"),
    )
)
fig.update_layout(
    title="Recovery of the donor's answer (mean over 3 pairs): one token patched at resid_pre",
    xaxis=dict(
        title="patched token (first pair's text)",
        tickmode="array",
        tickvals=list(grid.columns),
        ticktext=[labels[p] for p in grid.columns],
    ),
    yaxis=dict(title="layer", tickmode="array", tickvals=layers),
    height=360,
)
fig

# %% [markdown]
# `attribution_sweep` estimates the same sweep from one forward and one backward pass (the
# gradient at the clean run); `attribution_error` compares it with the exact sweep: where
# the patch moves the run far from the clean one (large changes), the estimate degrades.

# %%
# NBVAL_IGNORE_OUTPUT
# gradients are kernel-dependent in their last bits: the numbers are printed, not checked
attr = kd.attribution_sweep(model, cleans, donors, metric=metric, layers=layers)
err = kd.attribution_error(sweep, attr)
print(f"Pearson {err['pearson']:.2f} | Spearman {err['spearman']:.2f} over {err['n_cells']} cells")
print(f"largest error {err['max_abs_error']:.2f}, median {err['median_abs_error']:.3f} (logits)")
print(err["worst"].round(2).to_string(index=False))

# %% [markdown]
# ## K/V are a function of the residual
# `rebuild_kv` recomputes a layer's keys and values from its `resid_pre` with the layer's own modules; `reconstruction_report` compares every layer with the forward pass's hooks.

# %%
# NBVAL_CHECK_OUTPUT
report = kd.reconstruction_report(model, clean)
same = report[report["shape"] == "same"]  # the forward pass's own GEMM shapes: any machine
print(same.groupby("tensor", sort=False).bitwise_equal.sum().to_string())

# %%
# NBVAL_IGNORE_OUTPUT
# one token at a time is a 1-row GEMM: another kernel, whose bits depend on the CPU
print("CPU:", torch.backends.cpu.get_cpu_capability(), "| threads:", torch.get_num_threads())
one = report[report["shape"] == "one_token"]
print(one.groupby("tensor", sort=False).bitwise_equal.sum().to_string())

# %% [markdown]
# ## Generate under a cache policy
# KV-Direct keeps a window of K/V and rebuilds older tokens' K/V from checkpoints.

# %%
# NBVAL_CHECK_OUTPUT
chat = [{"role": "user", "content": "Name three colours of the rainbow."}]
full = kd.generate(model, chat, max_new_tokens=16, keep_logits=True)
kvd = kd.generate(model, chat, max_new_tokens=16, keep_logits=True, cache=kd.KVDirect(8))
# the free-running text itself is not checked: a near-tie can flip on another CPU's kernels
print(
    "same tokens:",
    torch.equal(full.tokens, kvd.tokens),
    "| same logits bits:",
    all(torch.equal(a, b) for a, b in zip(full.logits, kvd.logits, strict=True)),
)
print(
    kvd.memory_frame()[["tokens_seen", "kv_bytes", "residual_bytes"]].tail(2).to_string(index=False)
)

# %%
# NBVAL_IGNORE_OUTPUT
print(repr(full.text[0]))

# %%
assert float(kd.kl_divergence(trace.logits, patched).max()) == 0.0
assert torch.equal(full.tokens, kvd.tokens)
assert torch.equal(fast, slow)
assert same.bitwise_equal.all()
assert sweep.attrs["path"] == "layered"  # the exact fast sweep ran
# the last token carries the answer only from late layers on: patched at layer 25 it moves
# the logit difference the whole way to the donor's, at layers 0-20 it moves it (almost) not
assert last[last.layer == 25].recovery.iloc[0] > 0.9
assert (last[last.layer <= 20].recovery.abs() < 0.05).all()

# %% [markdown]
# Next: `01_kv_is_a_projection` ... `06_latency`, one claim each, each ending in a verdict table.
