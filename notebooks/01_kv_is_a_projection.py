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
TEXT = ex.load_data("prompts.json")["prompts"][0]
SHAPES = ("same", "one_token", "one_token_padded8")
CPU = f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def summary(model, dtype_name):
    report = kd.reconstruction_report(model, TEXT, shapes=SHAPES)
    df = report[report.reference.notna()]
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
    return report, out


# %%
# NBVAL_IGNORE_OUTPUT
results, tables = {}, []
for name in MODELS + [n for n in kd.list_models().name if n.startswith("tiny-")]:
    for dtype, dname in [(torch.float32, "fp32"), (torch.bfloat16, "bf16")]:
        model = kd.load_model(name, dtype=dtype)
        report, table = summary(model, dname)
        table.insert(0, "model", name)
        results[name, dname] = report
        tables.append(table)
summary_table = pd.concat(tables, ignore_index=True)

# %% [markdown]
# The full table: bitwise-equal layers, max |error| and max ULP distance per model, dtype
# and rebuild shape. Its numbers for the other shapes depend on which GEMM kernels the CPU
# runs (ISA, thread count): we have seen the bf16 one-token counts and the ULP distances
# change from one machine to another, so they are printed here, not checked.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"on this CPU ({CPU}):")
with pd.option_context("display.float_format", "{:.2g}".format):
    print(summary_table.to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
df = results[MODELS[0], "fp32"]
px.bar(
    df[(df["shape"] != "same") & df.reference.notna()],
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
# the same bits as the cached ones, on every model and family, in fp32 and bf16: the same
# kernels run on the same inputs, so this holds on any machine. Other shapes run other
# kernels, and what they give depends on the CPU (the table above, printed, not checked): on
# the machines we used, one token at a time in fp32 differed in the last bits (about 1e-5)
# on every layer; padding that row back into an 8-row GEMM restored equality on SmolLM2's
# kernels (not on every model's: the stored study below shows each model's padded rebuild);
# and in bf16 rounding hid the kernel difference on one machine and left a few tiny-model
# layers 1-8 ULP off on another. "Bit-identical" therefore holds for identical shapes and kernels, and for
# other shapes only where the kernels happen to agree: a cache-free implementation must
# reproduce the shapes to be exact in general.
#
# The verdict comes from `verdicts.claim1`, applied to each reconstruction report: the part
# "same GEMM shape" (every layer bitwise at the forward pass's shapes) decides between
# "fails" and the rest, the part "any shape" (every layer bitwise one token at a time)
# between "holds" and "holds under conditions". The first part is machine-independent and
# checked below; the verdict itself rests on the second, so it is printed with the CPU it
# was measured on.

# %%
verdicts = {key: vd.claim1(report) for key, report in results.items()}
v = verdicts[MODELS[0], "fp32"]
per_run = pd.DataFrame(
    [
        {
            "model": m,
            "dtype": dt,
            **{p.name: p.held for p in verdict.parts},
            "verdict": verdict.verdict,
        }
        for (m, dt), verdict in verdicts.items()
    ]
)

# %%
# NBVAL_CHECK_OUTPUT
# machine-independent: the rebuild at the forward pass's own shapes, on every model and dtype
same = summary_table[summary_table["shape"] == "same"]
print(same[["model", "dtype", "layers", "bitwise_layers"]].to_string(index=False))
print(
    "part 'same GEMM shape' held for every model and dtype:", bool(per_run["same GEMM shape"].all())
)

# %%
# NBVAL_IGNORE_OUTPUT
# kernel-dependent: the one-token rebuild decides "any shape", hence the verdict
print(f"on this CPU ({CPU}):")
print(per_run.to_string(index=False))
with pd.option_context("display.max_colwidth", None):
    display(vd.table([v]))
    display(vd.parts_table([v]))

# %%
assert (same.bitwise_layers == same.layers).all(), "same-shape rebuild is no longer bitwise"
assert per_run["same GEMM shape"].all() and (per_run.verdict != vd.FAILS).all()
assert v.verdict in (vd.HOLDS, vd.CONDITIONAL)

# %% [markdown]
# ## The full study (stored results)
# `kvdirect-interp study --size full --claims 1` ran the reconstruction report on every
# layer over 8 prompts of 32-512 tokens (the long prompts, cut), in fp32 and bf16, at the
# three rebuild shapes. Where a model's table is in `results/`, it is shown with the run
# that made it and judged by `verdicts.claim1` per dtype, over every prompt at once (a
# layer is bitwise at a shape only if it is so on every prompt); a model not yet studied
# says so.

# %%
# NBVAL_IGNORE_OUTPUT
from kvdirect_interp import results, study  # noqa: E402

stored = results.stored_tables(1, STUDIED)
for name, table in stored.items():
    compared = table[table.reference.notna()]
    share = (
        compared.groupby(["dtype", "shape", "tokens"]).bitwise_equal.mean().mul(100).reset_index()
    )
    fig = px.line(
        share,
        x="tokens",
        y="bitwise_equal",
        color="shape",
        facet_col="dtype",
        markers=True,
        log_x=True,
        range_y=[-5, 105],
        labels={"tokens": "prompt tokens", "bitwise_equal": "% of layers' K, V, rotated K bitwise"},
        title=f"{name}: rebuilt K/V bitwise equal to the cached ones (%), by rebuild shape",
    )
    fig.show()
    judged = results.claim1_reports(table)
    with pd.option_context("display.max_colwidth", None):
        display(
            pd.concat(
                [vd.parts_table([vd.claim1(r)]).assign(dtype=dt) for dt, r in judged.items()],
                ignore_index=True,
            )[["dtype", "part", "measured", "held"]]
        )
        display(
            pd.concat(
                [vd.table([vd.claim1(r)]).assign(dtype=dt) for dt, r in judged.items()],
                ignore_index=True,
            )
        )

# %%
# the stored verdicts follow from the stored rows: "same GEMM shape" held on every prompt
for table in stored.values():
    for dt, report in results.claim1_reports(table).items():
        v = vd.claim1(report)
        same = report[(report["shape"] == "same") & report.reference.notna()]
        assert v.parts[0].held == bool(same.bitwise_equal.all()), dt
        assert v.numbers["layers"] == table.layer.nunique()

# %% [markdown]
# **A stored unit measured again.** Prompt 0 at 32 tokens in fp32 is measured here through
# the study's own measurement function and compared with its stored rows: tensor names,
# bitwise flags and ULP distances. The flags of the other shapes belong to the CPU's
# kernels, so they are asserted only on the kind of machine that made the table (same CPU,
# same threads); the same-shape rows must match anywhere.

# %%
# NBVAL_IGNORE_OUTPUT
rechecked = {}
if MODELS[0] in stored:
    fp32 = kd.load_model(MODELS[0])
    table = stored[MODELS[0]]
    settings, rows = study.stored_unit(table, dtype="float32", prompt=0)
    fresh = study.remeasure(fp32, MODELS[0], 1, settings)  # measured once, compared twice
    rechecked["all shapes"] = study.compare(rows, fresh, **study.reproduce.RULES[1])
    same_rows = [r[r["shape"] == "same"] for r in (rows, fresh)]
    rechecked["same shape"] = study.compare(*same_rows, **study.reproduce.RULES[1])
    print(f"same machine as the stored run: {results.same_machine(table)}")
    display(pd.concat([c.assign(rows_of=k) for k, c in rechecked.items()], ignore_index=True))

# %%
if rechecked:
    assert rechecked["same shape"].equal.all(), "same-shape rebuild differs from the stored run"
    if results.same_machine(stored[MODELS[0]]):
        assert rechecked["all shapes"].equal.all(), "the stored unit does not reproduce"
