# %% [markdown]
# # Claim 1: keys and values are projections of the residual stream
#
# > "Keys and values at every layer are deterministic projections of the residual stream;
# > recomputing them ... has exactly zero reconstruction error, bit-identically."
#
# **Method.** For every layer, rebuild K, V and the rotated K (after k-norm and rotary) from
# that layer's `resid_pre` with the layer's own modules, and compare with the values the
# forward pass's hooks saw: bitwise equality, max |error|, max ULP distance. Three rebuild
# shapes: the forward pass's own (one GEMM over all tokens), one token at a time (a 1-row
# GEMM), and one token padded into an 8-row GEMM. Then the same in bfloat16.
#
# Note: this rebuild uses the *per-layer* residual. The paper's "5 KB per token" is one
# residual vector, from which every layer below must be recomputed (notebook 04).

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
TEXT = ex.load_data("prompts.json")["prompts"][0]
SHAPES = ("same", "one_token", "one_token_padded8")
HOLDS, HOLDS_IF, FAILS = "holds", "holds under conditions", "fails"


def verdict(n_ok, n):  # from the count of layers that were bitwise equal: all, some, none
    return HOLDS if n_ok == n else FAILS if n_ok == 0 else HOLDS_IF


def summary(model, dtype_name):
    df = kd.reconstruction_report(model, TEXT, shapes=SHAPES)
    df = df[df.reference.notna()]
    per_layer = (
        df.groupby(["shape", "layer"])
        .agg(eq=("bitwise_equal", "all"), err=("max_abs_err", "max"), ulp=("max_ulp", "max"))
        .reset_index()
    )
    out = (
        per_layer.groupby("shape", sort=False)
        .agg(
            layers=("layer", "size"),
            bitwise_layers=("eq", "sum"),
            max_abs_err=("err", "max"),
            max_ulp=("ulp", "max"),
        )
        .reset_index()
    )
    out.insert(0, "dtype", dtype_name)
    return df, out


# %%
# NBVAL_IGNORE_OUTPUT
results, tables = {}, []
for name in MODELS + [n for n in kd.list_models().name if n.startswith("tiny-")]:
    for dtype, dname in [(torch.float32, "fp32"), (torch.bfloat16, "bf16")]:
        model = kd.load_model(name, dtype=dtype)
        df, table = summary(model, dname)
        table.insert(0, "model", name)
        results[name, dname] = df
        tables.append(table)
summary_table = pd.concat(tables, ignore_index=True)

# %% [markdown]
# The full table: bitwise-equal layers, max |error| and max ULP distance per model, dtype
# and rebuild shape. Its numbers for the other shapes depend on which GEMM kernels the CPU
# runs (ISA, thread count): we have seen the bf16 one-token counts and the ULP distances
# change from one machine to another, so they are printed here, not checked.

# %%
# NBVAL_IGNORE_OUTPUT
print(
    "CPU capability:",
    torch.backends.cpu.get_cpu_capability(),
    "| threads:",
    torch.get_num_threads(),
)
with pd.option_context("display.float_format", "{:.2g}".format):
    print(summary_table.to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
df = results[MODELS[0], "fp32"]
px.bar(
    df[df["shape"] != "same"],
    x="layer",
    y="max_abs_err",
    color="tensor",
    facet_row="shape",
    barmode="group",
    log_y=True,
    height=500,
    title=f"{MODELS[0]} fp32: max |rebuilt - hook| per layer (same shape: all exactly 0)",
)


# %% [markdown]
# **Reading.** With the forward pass's own GEMM shape, every layer's K, V and rotated K are
# the same bits as the cached ones, on every model and family, in fp32 and bf16. One token
# at a time in fp32, the rebuild takes another kernel path and differs in the last bits
# (about 1e-5) on every layer; padding that row back into an 8-row GEMM restores equality.
# In bf16, rounding hides most of the kernel difference, and whether it hides all of it
# depends on the machine: on this one (the table above) the one-token bf16 rebuild was
# bitwise equal on every layer; elsewhere we have seen a few tiny-model layers 1-8 ULP off.
# "Bit-identical" therefore holds for identical shapes and kernels, and for other shapes
# only where the kernels happen to agree: a cache-free implementation must reproduce the
# shapes to be exact in general.


# %%
# NBVAL_CHECK_OUTPUT
def by_shape(shape, dtype):
    part = summary_table[(summary_table["shape"] == shape) & (summary_table.dtype == dtype)]
    return int(part.bitwise_layers.sum()), int(part.layers.sum())


rows = []
for label, shape, dtypes in [
    ("same GEMM shape as the forward pass", "same", ["fp32", "bf16"]),
    ("one token at a time", "one_token", ["fp32"]),
    ("one token padded into 8 rows", "one_token_padded8", ["fp32", "bf16"]),
]:
    for dt in dtypes:
        ok, n = by_shape(shape, dt)
        rows.append((f"1 K/V rebuilt, {label}, {dt}", f"{ok}/{n} layers bitwise", verdict(ok, n)))
same_ok, same_n = by_shape("same", "fp32")
one_ok, one_n = by_shape("one_token", "fp32")
rows.append(
    (
        "1 bit-identical K/V from the residual",
        "only with the forward pass's shapes",
        HOLDS_IF if same_ok == same_n and one_ok < one_n else verdict(min(same_ok, one_ok), same_n),
    )
)
print(verdict_table(rows).to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
ok, n = by_shape("one_token", "bf16")  # machine-dependent: printed, not checked
print(f"1 K/V rebuilt one token at a time, bf16: {ok}/{n} layers bitwise -> {verdict(ok, n)}")

# %%
same = summary_table[summary_table["shape"] == "same"]
assert (same.bitwise_layers == same.layers).all(), "same-shape rebuild is no longer bitwise"
one32 = summary_table[(summary_table["shape"] == "one_token") & (summary_table.dtype == "fp32")]
real = one32[one32.model.isin(MODELS)]
assert (real.bitwise_layers < real.layers).all(), (
    "fp32 one-token rebuild became bitwise: update the verdict"
)
pad = summary_table[
    (summary_table.model.isin(MODELS)) & (summary_table["shape"] == "one_token_padded8")
]
assert (pad.bitwise_layers == pad.layers).all()
