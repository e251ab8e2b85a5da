# %% [markdown]
# # Claim 6: recomputing K/V is up to 5x faster than reading them
#
# > "Per operation, recomputation runs up to 5x faster than reading cached tensors at
# > moderate batch sizes."
#
# **Method.** Side by side in one run: rebuilding one layer's K/V for N evicted tokens from
# their residuals (norm, projections, rotary) vs reading N tokens' K/V (a copy of the held
# tensors), for batch sizes 1, 4, 16. Then end-to-end tokens per second per policy. Timings
# depend on the machine (here: 2 CPU cores) and are never compared by the tests, and
# neither is the verdict they decide: both are printed with the CPU they were measured on.

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
ops = ex.rebuild_vs_read(
    model, layer=0, n_tokens=(64, 256, 1024), batch_sizes=(1, 4, 16), repeats=3
)
print(f"on this CPU ({CPU}):")
ops

# %%
# NBVAL_IGNORE_OUTPUT
px.line(
    ops,
    x="evicted_tokens",
    y="rebuild_over_read",
    color="batch",
    markers=True,
    log_y=True,
    title="time(rebuild) / time(read) per operation, one layer",
)

# %%
# NBVAL_IGNORE_OUTPUT
prompt = ex.load_data("prompts.json")["prompts"][1] * 2
policies = {
    "FullKV": kd.FullKV(),
    "NoCache": kd.NoCache(),
    "WindowOnly(32)": kd.WindowOnly(32),
    "KVDirect(32) every_layer exact": kd.KVDirect(32),
    "KVDirect(32) every_layer fast": kd.KVDirect(32, exact_shapes=False),
    "KVDirect(32) token_ids fast": kd.KVDirect(32, checkpoint="token_ids", exact_shapes=False),
}
speed = []
for name, pol in policies.items():
    g = kd.generate(model, prompt, max_new_tokens=16, cache=pol)
    speed.append(
        dict(policy=name, context=g.tokens.shape[1], seconds=g.seconds, tokens_per_s=16 / g.seconds)
    )
speed = pd.DataFrame(speed)
print(f"on this CPU ({CPU}):")
speed

# %% [markdown]
# **Reading.** On this CPU, rebuilding K/V costs one to several hundred times as long as
# reading them: the rebuild is a GEMM per layer over all evicted tokens, the read a memory
# copy. End to end, every KV-Direct mode decodes slower than the full cache. A GPU with
# scarce memory bandwidth may move the ratio, but "5x faster" is not what we measure here.
#
# The verdict, from `verdicts.claim6`: "up to 5x faster" is a best case, so it rests on the
# best configuration measured: "faster than reading somewhere" (the smallest rebuild/read
# ratio below 1) and "up to 5x faster" (that ratio at or below 1/5). Timings belong to the
# machine, so the verdict is printed with the CPU, never checked; what is checked is which
# configurations it was judged on.

# %%
v = vd.claim6(ops)

# %%
# NBVAL_CHECK_OUTPUT
print("configurations timed (batch x evicted tokens):")
print(ops.groupby("batch").evicted_tokens.apply(list).to_string())
print(vd.parts_table([v])[["part", "paper"]].to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
print(f"on this CPU ({CPU}):")
with pd.option_context("display.max_colwidth", None):
    display(vd.table([v]))
    display(vd.parts_table([v]))

# %%
# the best case decides: the verdict follows the smallest ratio, whichever machine ran it
best = ops.rebuild_over_read.min()
assert v.parts[0].held == (best < 1) and v.parts[1].held == (best <= 1 / 5)
assert v.numbers["configurations"] == len(ops) == 9

# %% [markdown]
# ## The full study (stored results)
# `kvdirect-interp study --size full --claims 6` times the rebuild of one layer's K/V for
# N = 64 .. 4,096 evicted tokens at batch 1, 4 and 16 against the places a system would
# keep them: RAM (a copy), a file on local disk read after its pages were dropped from the
# page cache (`os.posix_fadvise(POSIX_FADV_DONTNEED)` after an fsync) and, on a machine
# with a CUDA device, host memory read into the GPU (the rebuild then runs on the GPU; the
# stored studies ran on CPU-only machines, so they have no GPU tier). Where a model's table
# is in `results/`, it is shown with the run that made it and judged by the same verdict
# function, per tier measured; a model not yet studied says so.

# %%
# NBVAL_IGNORE_OUTPUT
from kvdirect_interp import results  # noqa: E402

tables = results.stored_tables(6, STUDIED)
stored = {}
for name, table in tables.items():
    stored[name] = tiers = results.claim6_tiers(table)
    disk = table.dropna(subset=["disk_cache"])
    print("  disk reads:", ", ".join(sorted(disk.disk_cache.unique())), "|", *disk.disk_fs.unique())
    fig = px.line(
        tiers.assign(batch=tiers.batch.astype(str)),
        x="evicted_tokens",
        y="rebuild_over_read",
        color="batch",
        line_dash="tier",
        markers=True,
        log_x=True,
        log_y=True,
        labels={"evicted_tokens": "evicted tokens (N)", "rebuild_over_read": "rebuild / read"},
        title=f"{name}: time to rebuild one layer's K/V over time to read them, per tier"
        f" ({', '.join(tiers.tier.unique())})",
    )
    fig.add_hline(y=1, line_dash="dot", annotation_text="rebuild = read")
    fig.add_hline(y=0.2, line_dash="dot", annotation_text="the paper: 5x faster")
    fig.show()
    judged = [
        vd.table([vd.claim6(tiers[tiers.tier == t])]).assign(tier=t) for t in tiers.tier.unique()
    ]
    with pd.option_context("display.max_colwidth", None):
        display(pd.concat(judged, ignore_index=True))

# %%
# the stored verdicts follow from the stored rows, tier by tier
for tiers in stored.values():
    assert {"ram", "disk"} <= set(tiers.tier)  # the GPU tier only where a GPU ran the study
    for tier in tiers.tier.unique():
        rows = tiers[tiers.tier == tier]
        v = vd.claim6(rows)
        assert v.numbers["min_rebuild_over_read"] == rows.rebuild_over_read.min()
        assert v.numbers["configurations"] == len(rows) == 21

# %% [markdown]
# **End to end.** The same run also generates 16 tokens greedily under every policy
# (budget or window 64) up to 256 and 1,024 tokens of context (long prompt 15, cut) and
# times each forward pass: the prefill, and the median decode step, as tokens/s. Every
# policy runs in turns (FullKV, NoCache, ..., TOVA; again; again) after one warm-up each,
# so a change in the machine's load hits them alike: the bars are the median of three
# generations with their range, and vs FullKV's range is the ratio within each round. The
# frontier puts each policy's decode speed against the bytes it holds. Timings on the
# machine named; a model whose table has no such rows yet says so.

# %%
# NBVAL_IGNORE_OUTPUT
speeds = {}
for name, table in tables.items():
    decode = results.claim6_decode(table)
    if decode.empty:
        print(f"  {name}: no end-to-end decode rows stored yet")
        continue
    speeds[name] = decode
    px.bar(
        decode.assign(
            context=decode.context.astype(str),
            above=decode.decode_tok_s_max - decode.decode_tok_s,
            below=decode.decode_tok_s - decode.decode_tok_s_min,
        ),
        x="policy",
        y="decode_tok_s",
        error_y="above",
        error_y_minus="below",
        color="context",
        barmode="group",
        log_y=True,
        labels={"decode_tok_s": "decode tokens/s (median step)", "context": "context (tokens)"},
        title=f"{name}: decode speed per policy at 256 and 1,024 tokens of context, batch 1 "
        "(median of 3 rounds, range)",
    ).show()
    px.scatter(
        decode.assign(mb=decode.bytes_held / 1e6, context=decode.context.astype(str)),
        x="mb",
        y="decode_tok_s",
        color="policy",
        symbol="context",
        log_x=True,
        log_y=True,
        labels={"mb": "bytes held at the end (MB)", "decode_tok_s": "decode tokens/s"},
        title=f"{name}: memory held vs decode speed, every policy (budget / window 64)",
    ).show()
    cols = [
        "policy",
        "context",
        "prefill_s",
        "decode_tok_s",
        "decode_vs_fullkv",
        "vs_fullkv_min",
        "vs_fullkv_max",
        "end_to_end_tok_s",
    ]
    with pd.option_context("display.float_format", "{:.3g}".format):
        display(decode[cols + ["bytes_held", "gflops_per_step"]])

# %%
# the speeds are read against FullKV's at the same context, from the stored rows
for decode in speeds.values():
    full = decode[decode.policy == "FullKV"]
    assert (full.decode_vs_fullkv == 1).all() and set(full.context) == set(decode.context)
    assert (decode.decode_tok_s * decode.decode_step_s - 1).abs().max() < 1e-9
    assert (full.vs_fullkv_min == 1).all() and (full.vs_fullkv_max == 1).all()
    assert (decode.decode_tok_s_min <= decode.decode_tok_s).all()
    assert (decode.decode_tok_s <= decode.decode_tok_s_max).all()

# %% [markdown]
# **A stored unit measured again.** The end-to-end unit at 256 tokens of context is run
# again here through the study's own measurement function, over three of its policies and
# one round (the whole unit takes minutes), and compared with its stored rows: the prompt
# and token counts, the bytes each policy held by kind, the bytes rebuilt and the FLOPs per
# step, exactly, on any machine. Its speeds belong to the machine and are not compared.

# %%
# NBVAL_IGNORE_OUTPUT
from kvdirect_interp import study  # noqa: E402

recheck = None
if MODELS[0] in tables:
    few = {"policies": ["FullKV", "KVDirect[every_layer]", "H2O"], "rounds": 1}
    recheck = study.recheck(
        model, MODELS[0], 6, tables[MODELS[0]], overrides=few, measure="decode", context=256
    )
    print("unit:", recheck.attrs["settings"])
    display(recheck)

# %%
if recheck is not None:
    assert recheck.equal.all(), "the stored decode unit's bytes and FLOPs do not reproduce"
    assert recheck.rows.eq(3).all()  # one fresh row per policy re-measured

# %% [markdown]
# ## Claim 6 at the paper's scale: a roofline model (predicted, not measured)
#
# Everything above is measured, on CPUs. The paper's claim is about a GPU, and none ran
# here, so this section *predicts* claim 6 for the paper's model (Gemma 3-4B, bf16) and for
# Llama-3.2-1B with a roofline model (`kvdirect_interp.roofline`): an operation takes
# max(FLOPs / peak FLOP/s, bytes / bandwidth), with the FLOPs of the policies' own formulas
# (`cost`, as each policy's `step_flops` counts them) and the peaks of an H100 SXM, an A100
# SXM 80GB and an RTX 4090 from their published specifications
# (`kvdirect_interp/data/devices.json`: every number with its document and URL; PCIe Gen5 /
# Gen4 x16 per direction; NVMe: a Samsung 990 PRO's 7.45 GB/s). A read brings the evicted
# tokens' K/V to where attention reads them: a copy within GPU memory, a copy from pinned
# host memory over PCIe, or an NVMe read. `every_layer` rebuilds one layer's K/V from its
# residual (compared layer by layer); `first_layer` and `token_ids` re-run the evicted
# tokens through every layer (compared with reading every layer's K/V). Bytes are the
# least traffic and peaks are never reached, so both sides are lower bounds: the ratios are
# what the hardware allows, not what a kernel achieves. Nothing here is a measurement, and
# nothing here feeds the verdict above.

# %%
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from kvdirect_interp import real_shapes, roofline  # noqa: E402

DEVICES = ["H100 SXM", "A100 SXM 80GB", "RTX 4090"]
published = roofline.load_devices()
shapes = {m: (real_shapes.arch(m), real_shapes.shape(m)) for m in ("gemma3-4b", "llama3.2-1b")}
pred = roofline.predict([published[d] for d in DEVICES], shapes)
wins = roofline.where_recompute_wins(pred)

# %%
# NBVAL_CHECK_OUTPUT
print("PREDICTED by the roofline (not measured): speed-up of recomputing over reading,")
print("batch 1-64 x 64-4,096 evicted tokens, bf16")
cols = ["device", "model", "mode", "tier", "wins", "best_speedup", "best_from"]
cols += ["best_ckpt_in_tier_speedup", "ckpt_over_kv"]
with pd.option_context("display.float_format", "{:.3g}".format, "display.max_rows", 100):
    print(wins[cols].to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
for model in shapes:
    rows = pred[pred.model == model]
    fig = px.line(
        rows.assign(batch=rows.batch.astype(str)),
        x="evicted_tokens",
        y="speedup",
        color="mode",
        line_dash="batch",
        facet_col="device",
        facet_row="tier",
        markers=True,
        log_x=True,
        log_y=True,
        height=750,
        labels={"evicted_tokens": "evicted tokens (N)", "speedup": "read time / rebuild time"},
        title=f"PREDICTED (roofline, not measured): {model} bf16, how many times faster "
        "recomputing K/V is than reading them, per device and read tier",
    )
    fig.add_hline(y=1, line_dash="dot", annotation_text="equal")
    fig.add_hline(y=roofline.PAPER_SPEEDUP, line_dash="dot", annotation_text="the paper: 5x")
    fig.show()

# %%
# the predictions follow from the formulas: a per-layer rebuild reads a residual larger than
# the K/V it writes (grouped-query attention), so it never beats a copy within GPU memory,
# and checkpoints kept where the K/V would be can never win
assert set(pred.source) == set(wins.source) == {roofline.PREDICTED}
per_layer_hbm = wins[(wins["mode"] == "every_layer") & (wins.tier == "device_memory")]
assert (per_layer_hbm.best_speedup < 1).all()
assert (wins[wins.ckpt_over_kv > 1].best_ckpt_in_tier_speedup < 1).all()

# %% [markdown]
# **Reading (predicted).** Recomputing wins only against a slow tier. Against a copy
# within GPU memory it never wins, in any mode: a per-layer rebuild streams a residual that
# is larger than the K/V it replaces (Gemma 3-4B: 2,560 values against 2 x 4 x 256 = 2,048;
# Llama-3.2-1B: 2,048 against 1,024) and writes those K/V as well. Over PCIe the per-layer
# rebuild wins from 64 evicted tokens on (H100, A100; from 256 on the RTX 4090) and is
# compute-bound from a few hundred tokens (batch x N) on. There it costs d_model FLOPs per
# K/V byte in bf16 (2 FLOPs per multiply-add, d_model of them per element, 2 bytes per
# element), so its speed-up is peak FLOP/s / (link bytes/s x d_model), whatever the heads:
# 6.1x (Gemma 3-4B) and 7.7x (Llama-3.2-1B) on an H100 over PCIe Gen5, 3.9x and 4.8x on an
# A100 and 2.1x and 2.6x on an RTX 4090 over Gen4. The paper's "up to 5x" is within reach
# of an H100-class GPU only. From NVMe the per-layer rebuild wins everywhere (9-65x). The
# replay modes (one residual or a token id per token) re-run every layer for every evicted
# token: they lose to PCIe on every device and beat NVMe only on an H100 (1.8-2.4x). The
# per-layer win also assumes the residuals stay on the GPU while the K/V would not; on
# grouped-query shapes the residuals are the larger (1.25x and 2x the K/V), and kept in
# the same tier as the K/V would be they never win (best_ckpt_in_tier_speedup < 1). Past
# Gemma 3's 1,024-token window only 5 of its 34 layers still read old tokens' K/V, which
# makes reading cheaper still against the replay modes (the model counts every layer).
#
# **The model against measurements on this CPU.** `benchmarks/bench_roofline.py` measures
# this CPU's fp32 GEMM FLOP/s and copy bandwidth and, in the same run, claim 6's rebuild
# and read per operation for one real-width layer of each model, beside the roofline's
# prediction from the peaks it measured. Shown from its committed results.

# %%
# NBVAL_IGNORE_OUTPUT
ROOT = Path(kd.__file__).resolve().parents[1]
cpu_check = ROOT / "benchmarks" / "results" / "roofline_cpu.json"
if not cpu_check.exists():
    print("benchmarks/bench_roofline.py has not been run here: no roofline_cpu.json stored")
else:
    stored_check = json.loads(cpu_check.read_text())
    run = stored_check["run"]
    peak = stored_check["peaks"]
    print(
        f"measured on {run['cpu']} ({run['torch_threads']} threads, {run['date_utc']}): "
        f"GEMM {peak['gemm_flops'] / 1e9:.1f} GFLOP/s fp32, copy "
        f"{peak['copy_bandwidth'] / 1e9:.1f} GB/s; measured over predicted (median): rebuild "
        f"{stored_check['summary']['rebuild_measured_over_predicted_median']:.2f}x, read "
        f"{stored_check['summary']['read_measured_over_predicted_median']:.2f}x"
    )
    check = pd.DataFrame(stored_check["rows"])
    long = pd.concat(
        [
            check.assign(op=op, measured_s=check[f"{op}_s"], predicted_s=check[f"pred_{op}_s"])
            for op in ("rebuild", "read")
        ]
    )
    fig = px.scatter(
        long.assign(batch=long.batch.astype(str)),
        x="predicted_s",
        y="measured_s",
        color="op",
        symbol="model",
        hover_data=["batch", "evicted_tokens"],
        log_x=True,
        log_y=True,
        labels={"predicted_s": "predicted (s)", "measured_s": "measured (s)"},
        title="This CPU: measured rebuild and read times against the roofline's prediction "
        "from the CPU's measured peaks (on the diagonal: as predicted)",
    )
    both = long[["predicted_s", "measured_s"]]
    lo, hi = both.min().min(), both.max().max()
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="measured = predicted")
    fig.show()
    cols = ["model", "batch", "evicted_tokens", "rebuild_s", "pred_rebuild_s", "bound"]
    cols += ["read_s", "pred_read_s", "rebuild_over_read", "pred_rebuild_over_read"]
    with pd.option_context("display.float_format", "{:.3g}".format):
        display(check[cols])

# %% [markdown]
# **The GPU run.** `bash scripts/gpu_check.sh` (`kvdirect_interp.gpu_check`) measures
# claim 6's tiers (rebuild from residuals on the GPU, a copy within GPU memory, a copy from
# pinned host memory) for batch 1-64 and N = 64-4,096 and decode speed and peak memory per
# policy on random weights of Gemma 3-4B's and Llama-3.2-1B's shapes, each beside the
# roofline's prediction for that GPU, and writes `results/gpu_check/`. Where a run is
# stored it is shown here, measured and predicted side by side.

# %%
# NBVAL_IGNORE_OUTPUT
gpu_run = ROOT / "results" / "gpu_check" / "gpu_check.json"
if not gpu_run.exists():
    print("no GPU run stored yet: results/gpu_check/gpu_check.json is absent")
else:
    stored_gpu = json.loads(gpu_run.read_text())
    prov = stored_gpu["provenance"]
    print(
        f"measured on {prov['device']} (driver {prov['nvidia_driver']}, CUDA "
        f"{prov['cuda_version']}, torch {prov['torch_version']}, {prov['date_utc']}), "
        f"plan {prov['plan']['name']}; spec_* and peak_* columns are PREDICTED"
    )
    with pd.option_context("display.float_format", "{:.3g}".format):
        display(pd.DataFrame(stored_gpu["tiers"]))
        display(pd.DataFrame(stored_gpu["decode"]))
