"""Write the notebooks in notebooks/ (unexecuted). scripts/execute_notebooks.sh runs them
and stores their outputs. Edit the cells here, not in the .ipynb files."""

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks"


def md(text):
    return new_markdown_cell(text.strip())


def code(text):
    return new_code_cell(text.strip())


def check(text):  # printed, rounded numbers that nbval compares
    return new_code_cell("# NBVAL_CHECK_OUTPUT\n" + text.strip())


def ignore(text):  # figures, widgets, timings: never compared
    return new_code_cell("# NBVAL_IGNORE_OUTPUT\n" + text.strip())


SETUP = ignore("""
import warnings
warnings.filterwarnings("ignore")
import torch
import pandas as pd
import plotly.express as px
import plotly.io as pio
import kvdirect_interp as kd
from kvdirect_interp import experiments as ex
pio.renderers.default = "plotly_mimetype"
pd.set_option("display.width", 160)
torch.set_num_threads(2)
""")

PARAMS = """
# Parameters: the default packaged model always runs; add "gemma3-270m" or "qwen2.5-0.5b"
# (installed on demand, see README) to measure them too.
MODELS = ["smollm2-135m"]
"""

VERDICT = """
def verdict_table(rows):
    return pd.DataFrame(rows, columns=["claim", "measured", "verdict"])
"""

NOTEBOOKS = {}

NOTEBOOKS["00_tour"] = [
    md("""
# A tour of kvdirect_interp

Load a real model offline, capture and patch the residual stream, rebuild K/V from it, and
generate under the full cache and under KV-Direct: the whole API in a few minutes. Every
claim of *The Residual Stream Is All You Need* (arXiv 2603.19664) has its own notebook.
"""),
    SETUP,
    ignore("""
model = kd.load_model("smollm2-135m")   # GGUF from a PyPI wheel, sha256-checked, no hub
kd.list_models()
"""),
    md("## Capture and patch\n`capture_residuals` keeps `resid_pre/mid/post` at every layer; `patch_residual` swaps a donor's residual in."),
    check("""
clean = "The capital of France is Paris, and the capital of Italy is"
donor = "The capital of Spain is Madrid, and the capital of Japan is"
trace = kd.capture_residuals(model, donor, sites=("resid_pre", "resid_post"))
print("resid_pre:", tuple(trace.resid["resid_pre"].shape), "(layers, batch, pos, d_model)")
patched = kd.patch_residual(model, clean, layer=12, source=trace)
print("max KL(donor || patched) at layer 12:", float(kd.kl_divergence(trace.logits, patched).max()))
top = lambda logits: model.tokenizer.decode([int(logits[0, -1].argmax())])
print("clean ->", repr(top(model(model.to_tokens(clean)))), "| patched ->", repr(top(patched)))
"""),
    md("## K/V are a function of the residual\n`rebuild_kv` recomputes a layer's keys and values from its `resid_pre` with the layer's own modules; `reconstruction_report` compares every layer with the forward pass's hooks."),
    check("""
report = kd.reconstruction_report(model, clean)
print(report.groupby(["shape", "tensor"], sort=False).bitwise_equal.sum().to_string())
"""),
    md("## Generate under a cache policy\nKV-Direct keeps a window of K/V and rebuilds older tokens' K/V from checkpoints."),
    check("""
chat = [{"role": "user", "content": "Name three colours of the rainbow."}]
full = kd.generate(model, chat, max_new_tokens=16, keep_logits=True)
kvd = kd.generate(model, chat, max_new_tokens=16, keep_logits=True, cache=kd.KVDirect(8))
print(repr(full.text[0]))
print("same tokens:", torch.equal(full.tokens, kvd.tokens),
      "| same logits bits:", all(torch.equal(a, b) for a, b in zip(full.logits, kvd.logits)))
print(kvd.memory_frame()[["tokens_seen", "kv_bytes", "residual_bytes"]].tail(2).to_string(index=False))
"""),
    code("""
assert float(kd.kl_divergence(trace.logits, patched).max()) == 0.0
assert torch.equal(full.tokens, kvd.tokens)
"""),
    md("Next: `01_kv_is_a_projection` ... `06_latency`, one claim each, each ending in a verdict table."),
]

NOTEBOOKS["01_kv_is_a_projection"] = [
    md("""
# Claim 1: keys and values are projections of the residual stream

> "Keys and values at every layer are deterministic projections of the residual stream;
> recomputing them ... has exactly zero reconstruction error, bit-identically."

**Method.** For every layer, rebuild K, V and the rotated K (after k-norm and rotary) from
that layer's `resid_pre` with the layer's own modules, and compare with the values the
forward pass's hooks saw: bitwise equality, max |error|, max ULP distance. Three rebuild
shapes: the forward pass's own (one GEMM over all tokens), one token at a time (a 1-row
GEMM), and one token padded into an 8-row GEMM. Then the same in bfloat16.

Note: this rebuild uses the *per-layer* residual. The paper's "5 KB per token" is one
residual vector, from which every layer below must be recomputed (notebook 04).
"""),
    SETUP, code(PARAMS), code(VERDICT),
    code("""
TEXT = ex.load_data("prompts.json")["prompts"][0]
SHAPES = ("same", "one_token", "one_token_padded8")
HOLDS, HOLDS_IF, FAILS = "holds", "holds under conditions", "fails"

def verdict(n_ok, n):  # from the count of layers that were bitwise equal: all, some, none
    return HOLDS if n_ok == n else FAILS if n_ok == 0 else HOLDS_IF

def summary(model, dtype_name):
    df = kd.reconstruction_report(model, TEXT, shapes=SHAPES)
    df = df[df.reference.notna()]
    per_layer = df.groupby(["shape", "layer"]).agg(eq=("bitwise_equal", "all"),
                                                     err=("max_abs_err", "max"),
                                                     ulp=("max_ulp", "max")).reset_index()
    out = per_layer.groupby("shape", sort=False).agg(
        layers=("layer", "size"), bitwise_layers=("eq", "sum"), max_abs_err=("err", "max"),
        max_ulp=("ulp", "max")).reset_index()
    out.insert(0, "dtype", dtype_name)
    return df, out
"""),
    ignore("""
results, tables = {}, []
for name in MODELS + [n for n in kd.list_models().name if n.startswith("tiny-")]:
    for dtype, dname in [(torch.float32, "fp32"), (torch.bfloat16, "bf16")]:
        model = kd.load_model(name, dtype=dtype)
        df, table = summary(model, dname)
        table.insert(0, "model", name)
        results[name, dname] = df
        tables.append(table)
summary_table = pd.concat(tables, ignore_index=True)
"""),
    md("""
The full table: bitwise-equal layers, max |error| and max ULP distance per model, dtype
and rebuild shape. Its numbers for the other shapes depend on which GEMM kernels the CPU
runs (ISA, thread count): we have seen the bf16 one-token counts and the ULP distances
change from one machine to another, so they are printed here, not checked.
"""),
    ignore("""
print("CPU capability:", torch.backends.cpu.get_cpu_capability(), "| threads:", torch.get_num_threads())
with pd.option_context("display.float_format", "{:.2g}".format):
    print(summary_table.to_string(index=False))
"""),
    ignore("""
df = results[MODELS[0], "fp32"]
px.bar(df[df["shape"] != "same"], x="layer", y="max_abs_err", color="tensor", facet_row="shape",
       barmode="group", log_y=True, height=500,
       title=f"{MODELS[0]} fp32: max |rebuilt - hook| per layer (same shape: all exactly 0)")
"""),
    md("""
**Reading.** With the forward pass's own GEMM shape, every layer's K, V and rotated K are
the same bits as the cached ones, on every model and family, in fp32 and bf16. One token
at a time in fp32, the rebuild takes another kernel path and differs in the last bits
(about 1e-5) on every layer; padding that row back into an 8-row GEMM restores equality.
In bf16, rounding hides most of the kernel difference, and whether it hides all of it
depends on the machine: on this one (the table above) the one-token bf16 rebuild was
bitwise equal on every layer; elsewhere we have seen a few tiny-model layers 1-8 ULP off.
"Bit-identical" therefore holds for identical shapes and kernels, and for other shapes
only where the kernels happen to agree: a cache-free implementation must reproduce the
shapes to be exact in general.
"""),
    check("""
def by_shape(shape, dtype):
    part = summary_table[(summary_table["shape"] == shape) & (summary_table.dtype == dtype)]
    return int(part.bitwise_layers.sum()), int(part.layers.sum())

rows = []
for label, shape, dtypes in [("same GEMM shape as the forward pass", "same", ["fp32", "bf16"]),
                             ("one token at a time", "one_token", ["fp32"]),
                             ("one token padded into 8 rows", "one_token_padded8", ["fp32", "bf16"])]:
    for dt in dtypes:
        ok, n = by_shape(shape, dt)
        rows.append((f"1 K/V rebuilt, {label}, {dt}", f"{ok}/{n} layers bitwise", verdict(ok, n)))
same_ok, same_n = by_shape("same", "fp32")
one_ok, one_n = by_shape("one_token", "fp32")
rows.append(("1 bit-identical K/V from the residual", "only with the forward pass's shapes",
             HOLDS_IF if same_ok == same_n and one_ok < one_n else verdict(min(same_ok, one_ok), same_n)))
print(verdict_table(rows).to_string(index=False))
"""),
    ignore("""
ok, n = by_shape("one_token", "bf16")  # machine-dependent: printed, not checked
print(f"1 K/V rebuilt one token at a time, bf16: {ok}/{n} layers bitwise -> {verdict(ok, n)}")
"""),
    code("""
same = summary_table[summary_table["shape"] == "same"]
assert (same.bitwise_layers == same.layers).all(), "same-shape rebuild is no longer bitwise"
one32 = summary_table[(summary_table["shape"] == "one_token") & (summary_table.dtype == "fp32")]
real = one32[one32.model.isin(MODELS)]
assert (real.bitwise_layers < real.layers).all(), "fp32 one-token rebuild became bitwise: update the verdict"
pad = summary_table[(summary_table.model.isin(MODELS)) & (summary_table["shape"] == "one_token_padded8")]
assert (pad.bitwise_layers == pad.layers).all()
"""),
]

NOTEBOOKS["02_markov_patching"] = [
    md("""
# Claim 2: residual patching at any layer gives D_KL = 0

> "Cross-task residual patching at every layer gives D_KL = 0 between patched and original
> output distributions: the residual stream has a Markov property."

**Method.** Pairs of prompts from different tasks (`data/tasks.json`: capitals,
arithmetic, translation, sentiment, code) with equal token length. Patch the donor's
whole `resid_pre` into the clean run at every layer and compute D_KL(donor || patched) at
every position (float64). Then patch only some positions, where the rest of the clean
run still matters.

This is not an empirical surprise: a transformer block's output depends on its input
residual only, so replacing the whole residual replays the donor's computation from that
layer on, bit for bit.
"""),
    SETUP, code(PARAMS), code(VERDICT),
    ignore("""
model = kd.load_model(MODELS[0])
tasks = ex.load_data("tasks.json")["tasks"]
by_length = {}
for task, prompts in tasks.items():
    for p in prompts:
        by_length.setdefault(model.to_tokens(p).shape[1], []).append((task, p))
pairs = []
for n, items in sorted(by_length.items()):
    for i, (ta, a) in enumerate(items):
        for tb, b in items[i + 1:]:
            if ta != tb and len(pairs) < 3:  # 3 pairs x every layer: the CI budget
                pairs.append((f"{ta}->{tb} ({n} tok)", a, b))
"""),
    ignore("""
full_rows, part_rows = [], []
for label, clean, donor in pairs:
    full = kd.patch_sweep(model, clean, donor, progress=False)
    full_rows.append(full.groupby("layer").kl_to_donor.max().rename(label))
    trace = kd.capture_residuals(model, donor)
    last = [float(kd.kl_divergence(trace.logits, kd.patch_residual(model, clean, layer=l, source=trace,
                                                                   positions=[-1]))[0, -1])
            for l in range(model.cfg.n_layers)]
    part_rows.append(pd.Series(last, name=label))
full_kl = pd.concat(full_rows, axis=1)
last_kl = pd.concat(part_rows, axis=1)
"""),
    check("""
print(f"{len(pairs)} cross-task pairs x {model.cfg.n_layers} layers")
print("whole residual patched: max KL over all layers, pairs, positions =", float(full_kl.values.max()))
print("last position only: min / max KL(donor || patched) =",
      f"{last_kl.values.min():.3g} / {last_kl.values.max():.3g}")
"""),
    ignore("""
px.imshow(last_kl.T.values, x=list(last_kl.index), y=list(last_kl.columns), aspect="auto",
          labels=dict(x="layer", y="task pair", color="KL"),
          title="only the last position patched: KL(donor || patched) at the last position")
"""),
    md("""
**Reading.** With the whole residual patched, KL is exactly 0.0 at every layer for every
pair: the patched run *is* the donor's run from that layer on. Patching only the last
position leaves KL well above 0 at early layers (earlier positions' keys and values still
come from the clean prompt) and close to 0 only near the top, where little attention
remains to be done. The "Markov property" is the layered computation itself; it says
nothing about how much of the residual a cache could drop.
"""),
    check("""
rows = [("2 whole-residual patching", f"max KL {float(full_kl.values.max()):.3g}", "holds"),
        ("2 partial patching (last position)", f"KL up to {last_kl.values.max():.3g}", "holds under conditions")]
print(verdict_table(rows).to_string(index=False))
"""),
    code("""
assert float(full_kl.values.max()) == 0.0
assert last_kl.values.max() > 0.1
"""),
]

NOTEBOOKS["03_no_cache_generation"] = [
    md("""
# Claim 3: generating without a cache gives token-identical output

> "Removing the cache and recomputing from scratch gives token-identical output under
> greedy decoding on every model tested."

**Method.** For two chat prompts, generate 32 tokens with the full K/V cache and with no
cache (every step re-runs the whole sequence), greedy and with seeded sampling (same
seed, same sampler).
Compare tokens, find the first divergence, and measure the logit drift per step.
"""),
    SETUP, code(PARAMS), code(VERDICT),
    ignore("""
model = kd.load_model(MODELS[0])
# two prompts: every uncached step re-runs the whole sequence (the notebook suite's budget)
prompts = [[{"role": "user", "content": c}] for c in
           ["Explain why the sky is blue.", "List three uses of a paperclip."]]
runs = []
for i, chat in enumerate(prompts):
    for mode, kw in [("greedy", {}), ("sampled", dict(do_sample=True, temperature=0.8, top_p=0.95, seed=i))]:
        a = kd.generate(model, chat, max_new_tokens=32, keep_logits=True, **kw)
        b = kd.generate(model, chat, max_new_tokens=32, keep_logits=True, cache=kd.NoCache(), **kw)
        m = kd.token_match(a.new_tokens, b.new_tokens)
        drift = [float((x - y).abs().max()) for x, y in zip(a.logits, b.logits)]
        runs.append(dict(prompt=i, mode=mode, token_match=m.fraction, first_divergence=m.first_divergence,
                         bitwise_steps=sum(d == 0.0 for d in drift), max_drift=max(drift), drift=drift))
runs = pd.DataFrame(runs)
"""),
    check("""
print(runs[["prompt", "mode", "token_match", "first_divergence", "bitwise_steps"]].to_string(index=False))
print("max logit drift < 1e-3:", bool(runs.max_drift.max() < 1e-3))
"""),
    ignore("""
long = runs.explode("drift").reset_index(drop=True)
long["step"] = long.groupby(["prompt", "mode"]).cumcount()
px.line(long, x="step", y="drift", color="mode", line_group="prompt", log_y=True,
        title="max |logit(cache) - logit(no cache)| per step")
"""),
    md("""
**Reading.** Tokens are identical for every prompt, greedy and sampled. The logits are not:
the first step is the same computation (bitwise equal), and from the second step on the
cached path computes one new row while the uncached path recomputes all rows, other GEMM
shapes with other rounding (drift around 1e-5 to 1e-4). Token identity holds because no
step lands on a near-tie; it is not a bitwise identity of the two computations.
"""),
    check("""
rows = [("3 no-cache greedy/sampled tokens", f"{runs.token_match.mean():.0%} equal", "holds"),
        ("3 no-cache logits", f"bitwise on {int(runs.bitwise_steps.sum())}/{32 * len(runs)} steps", "holds under conditions")]
print(verdict_table(rows).to_string(index=False))
"""),
    code("""
assert (runs.token_match == 1.0).all()
assert runs.max_drift.max() > 0 and runs.max_drift.max() < 1e-2
"""),
]

NOTEBOOKS["04_kvdirect_memory"] = [
    md("""
# Claim 4: KV-Direct bounds memory

> "KV-Direct checkpoints residual vectors (5 KB per token on Gemma 3-4B) instead of full
> K/V (136 KB) ... over 20 conversation turns its peak memory stays at 42 MB while the
> standard cache grows past 103 MB."

**Method.** Bytes per token of every storage kind from the model's shape (checked against
the actual tensors in the unit tests), for our models and for the paper's Gemma 3-4B
shape. Then the 20-turn chat in `data/chat_20_turns.json` under the full cache and
KV-Direct, with bytes held by kind after every turn and the process's peak RSS. Replies
are capped at `NEW` = 8 tokens so the notebook suite stays within its CI budget on 2 CPU
cores: all 20 user turns are processed in full, so the context still grows turn after
turn (to about 700 tokens); raise `NEW` for longer replies (every KV-Direct step rebuilds
the evicted tokens' K/V at every layer, which is what makes it slow here). The two
re-prefill modes (`token_ids`, `first_layer`) run the first 4 turns only: they re-run
every layer for all evicted tokens at every step; so does `min_bytes`, which on these
grouped-query models keeps K/V on every layer, i.e. is the full cache.
"""),
    SETUP, code(PARAMS), code(VERDICT),
    check("""
from kvdirect_interp.memory import GEMMA3_4B, Shape, bytes_per_token_table
shapes = [GEMMA3_4B]
for row in kd.list_models().itertuples():
    if row.kind == "packaged":
        shapes.append(Shape(row.name, row.n_layers, row.d_model, row.n_kv_heads, row.d_head, 4))
bpt = bytes_per_token_table(shapes)
print(bpt.pivot(index="model", columns="storage", values="bytes_per_token").to_string())
"""),
    md("""
On Gemma 3-4B the paper's 5 KB is one residual vector per token (2,560 x 2 bytes), while
its diagram rebuilds layer *l*'s K/V from *that layer's* residual: 34 of them, 170 KB,
more than the 136 KB of K/V. On the grouped-query models here, the per-layer residuals
cost 1.5x-3.5x the K/V they replace.
"""),
    ignore("""
model = kd.load_model(MODELS[0])
TURNS = ex.load_data("chat_20_turns.json")["turns"]
WINDOW, NEW = 64, 8
policies = {"FullKV": kd.FullKV(), "KVDirect every_layer": kd.KVDirect(WINDOW, exact_shapes=False)}
chats = {name: ex.run_chat(model, pol, max_new_tokens=NEW, progress=False) for name, pol in policies.items()}
# 4 turns only: the re-prefill modes redo every layer for the evicted tokens at every step,
# and min_bytes keeps K/V on every layer of a grouped-query model (it is the full cache)
short = {f"KVDirect {mode}": ex.run_chat(model, kd.KVDirect(WINDOW, checkpoint=mode, exact_shapes=False),
                                         turns=TURNS[:4], max_new_tokens=NEW, progress=False)
         for mode in ("min_bytes", "token_ids", "first_layer")}
timeline = pd.concat([df.assign(policy=name) for name, df in {**chats, **short}.items()])
"""),
    check("""
last = timeline.groupby("policy").tail(1).set_index("policy")
print(last[["turn", "total_tokens", "kv_bytes", "residual_bytes", "token_ids_bytes", "held_bytes"]].to_string())
"""),
    ignore("""
melted = timeline.melt(id_vars=["policy", "turn"], value_vars=["kv_bytes", "residual_bytes", "held_bytes"])
px.line(melted, x="turn", y="value", color="policy", facet_col="variable", markers=True,
        title="bytes held after each turn")
"""),
    ignore("""
px.line(timeline, x="turn", y="peak_rss_bytes", color="policy", markers=True,
        title="process peak RSS during each turn (includes the model: ~0.5-1 GB)")
"""),
    md("""
**What "bounded" bounds.** Under KV-Direct the K/V held stay flat at the window:
`WINDOW` tokens' worth, by the shape formula above (checked below). The checkpoints do not: per-layer residuals
grow with every token and cost more than the K/V they replace on this model;
`min_bytes` chooses K/V on every layer (grouped-query K/V are smaller than d_model), so it
*is* the full cache; `token_ids` and `first_layer` hold 4 or d_model x 4 bytes per token
but re-run every layer for the evicted tokens at every step (and materialise their K/V
transiently). The process's peak RSS is dominated by the model itself at this scale.
"""),
    check("""
fk, ev = last.loc["FullKV"], last.loc["KVDirect every_layer"]
rows = [("4 K/V bytes bounded by the window", f"{int(ev.kv_bytes):,} B vs {int(fk.kv_bytes):,} B full", "holds"),
        ("4 total bytes held (every_layer)", f"{ev.held_bytes / fk.held_bytes:.2f}x the full cache", "fails"),
        ("4 one vector per token (token_ids/first_layer)", "bounded bytes, re-prefill every step", "holds under conditions")]
print(verdict_table(rows).to_string(index=False))
"""),
    code("""
kv_per_token = int(bpt[(bpt.model == MODELS[0]) & (bpt.storage == "K/V (standard cache)")].bytes_per_token.iloc[0])
assert last.loc["KVDirect every_layer", "kv_bytes"] == WINDOW * kv_per_token
assert ev.held_bytes > fk.held_bytes  # residual checkpoints cost more than K/V on GQA
at4 = timeline[timeline.turn == 4].set_index("policy")
assert at4.loc["KVDirect min_bytes", "held_bytes"] == at4.loc["FullKV", "held_bytes"]
"""),
]

NOTEBOOKS["05_eviction_baselines"] = [
    md("""
# Claim 5: 100% token match at every budget, where eviction baselines fall to 5-28%

> "Against H2O, StreamingLLM, SnapKV, TOVA and window-only eviction, KV-Direct keeps 100%
> token match at every cache budget; the baselines fall to 5-28%."

**Method.** For the first two prompts in `data/prompts.json` and K/V budgets of 8 and 32
tokens, generate 12 tokens greedily under every policy and compare with the full cache:
token match of the free-running output, and D_KL(full || policy) per step with the policy
fed the full cache's tokens. Where a policy's own greedy choice is the full cache's token
at every step, that teacher-forced run *is* its free run and is not repeated. Bytes held
are shown next to the budget: KV-Direct's budget counts K/V only.
"""),
    SETUP, code(PARAMS), code(VERDICT),
    ignore("""
model = kd.load_model(MODELS[0])
prompts = ex.load_data("prompts.json")["prompts"][:2]  # kept small: the notebook suite runs in CI
policies = {**ex.BASELINES, **ex.KVDIRECT_MODES}
table = ex.agreement_table(model, prompts, policies=policies, budgets=(8, 32),
                           max_new_tokens=12, progress=False)
"""),
    check("""
summary = table.groupby(["policy", "budget"]).agg(token_match=("token_match", "mean"),
                                                  kl_mean=("kl_mean", "mean"),
                                                  bitwise=("logits_bitwise", "all"),
                                                  bytes_held=("bytes_held", "mean")).reset_index()
with pd.option_context("display.float_format", "{:.3g}".format):
    print(summary.pivot(index="policy", columns="budget", values="token_match").to_string())
"""),
    check("""
with pd.option_context("display.float_format", "{:.2g}".format):
    print(summary.pivot(index="policy", columns="budget", values="kl_mean").to_string())
"""),
    ignore("""
px.line(summary, x="budget", y="token_match", color="policy", markers=True,
        title="token match with the full cache vs K/V budget")
"""),
    ignore("""
px.line(summary, x="budget", y="kl_mean", color="policy", markers=True,
        title="mean D_KL(full || policy) per step vs K/V budget (KVDirect: exactly 0)")
"""),
    ignore("""
px.scatter(summary, x="bytes_held", y="token_match", color="policy", symbol="budget", log_x=True,
           title="token match vs bytes actually held")
"""),
    md("""
**Reading.** KV-Direct matches the full cache token for token with KL exactly 0 at every
budget, and its logits are the same bits: it evicts no information, only changes where the
K/V come from. The baselines drop information and diverge: near the paper's 5-28% when
the budget is a small part of the context, higher (up to about half) when the budget
covers most of a short prompt. The comparison is not one of
equal memory: on the x-axis of bytes held, KV-Direct (every_layer) holds more than the
full cache.
"""),
    check("""
kvd = summary[summary.policy.str.startswith("KVDirect")]
base = summary[~summary.policy.str.startswith("KVDirect")]
rows = [("5 KVDirect token match", f"{kvd.token_match.min():.0%} at every budget", "holds"),
        ("5 baselines fall to 5-28%", f"{base.token_match.min():.0%}-{base.token_match.max():.0%}",
         "holds" if base.token_match.max() <= 0.28 else "holds under conditions"),
        ("5 equal-memory comparison", "KVDirect holds more bytes than the full cache", "holds under conditions")]
print(verdict_table(rows).to_string(index=False))
"""),
    code("""
assert (kvd.token_match == 1.0).all() and (kvd.kl_mean == 0.0).all() and kvd.bitwise.all()
assert base.token_match.max() < 1.0
ev = summary[summary.policy == "KVDirect[every_layer]"].bytes_held
assert (ev.values > table.fullkv_bytes.mean()).all()
"""),
]

NOTEBOOKS["06_latency"] = [
    md("""
# Claim 6: recomputing K/V is up to 5x faster than reading them

> "Per operation, recomputation runs up to 5x faster than reading cached tensors at
> moderate batch sizes."

**Method.** Side by side in one run: rebuilding one layer's K/V for N evicted tokens from
their residuals (norm, projections, rotary) vs reading N tokens' K/V (a copy of the held
tensors), for batch sizes 1, 4, 16. Then end-to-end tokens per second per policy. Timings
depend on the machine (here: 2 CPU cores) and are never compared by the tests; the
verdict is.
"""),
    SETUP, code(PARAMS), code(VERDICT),
    ignore("""
model = kd.load_model(MODELS[0])
ops = ex.rebuild_vs_read(model, layer=0, n_tokens=(64, 256, 1024), batch_sizes=(1, 4, 16), repeats=3)
ops
"""),
    ignore("""
px.line(ops, x="evicted_tokens", y="rebuild_over_read", color="batch", markers=True, log_y=True,
        title="time(rebuild) / time(read) per operation, one layer")
"""),
    ignore("""
import time
prompt = ex.load_data("prompts.json")["prompts"][1] * 2
policies = {"FullKV": kd.FullKV(), "NoCache": kd.NoCache(), "WindowOnly(32)": kd.WindowOnly(32),
            "KVDirect(32) every_layer exact": kd.KVDirect(32),
            "KVDirect(32) every_layer fast": kd.KVDirect(32, exact_shapes=False),
            "KVDirect(32) token_ids fast": kd.KVDirect(32, checkpoint="token_ids", exact_shapes=False)}
speed = []
for name, pol in policies.items():
    g = kd.generate(model, prompt, max_new_tokens=16, cache=pol)
    speed.append(dict(policy=name, context=g.tokens.shape[1], seconds=g.seconds,
                      tokens_per_s=16 / g.seconds))
speed = pd.DataFrame(speed)
speed
"""),
    md("""
**Reading.** On this CPU, rebuilding K/V costs one to several hundred times as long as
reading them: the rebuild is a GEMM per layer over all evicted tokens, the read a memory
copy. End to end, every KV-Direct mode decodes slower than the full cache. A GPU with
scarce memory bandwidth may move the ratio, but "5x faster" is not what we measure here.
"""),
    check("""
ratio = ops.rebuild_over_read
rows = [("6 rebuild vs read per operation", "rebuild slower in every configuration measured" if ratio.min() > 1 else "mixed", "fails")]
print(verdict_table(rows).to_string(index=False))
"""),
    code("""
assert ops.rebuild_over_read.min() > 1 / 5, "recompute reached 5x faster than read: update the verdict"
"""),
]


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(NOTEBOOKS))
    if unknown:
        raise SystemExit(f"unknown notebooks {unknown}; accepted: {list(NOTEBOOKS)}")
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        if names and name not in names:
            continue
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        nbformat.write(nb, OUT / f"{name}.ipynb")
        print("wrote", OUT / f"{name}.ipynb")


if __name__ == "__main__":
    main(sys.argv[1:])  # names to write (default: all)
