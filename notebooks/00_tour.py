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

# %% [markdown]
# Next: `01_kv_is_a_projection` ... `06_latency`, one claim each, each ending in a verdict table.
