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
from IPython.display import display

import kvdirect_interp as kd
from kvdirect_interp import experiments as ex
from kvdirect_interp import verdicts as vd
from kvdirect_interp.verify import formula_cost

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
# NBVAL_CHECK_OUTPUT
from dataclasses import replace  # noqa: E402

from kvdirect_interp import results  # noqa: E402
from kvdirect_interp.memory import GEMMA3_4B, LLAMA2_7B, Shape  # noqa: E402
from kvdirect_interp.policies.storage import bytes_per_token_table  # noqa: E402

# the packaged models' shapes as the study stored them (results/<model>/model.json, taken
# from the loaded model: sliding-window layers included), fp32 as they run here
shapes = [GEMMA3_4B, LLAMA2_7B]
shapes += [replace(results.facts(name).shape, name=name) for name in STUDIED]
bpt = bytes_per_token_table(shapes)
print("bytes per token, every layer growing (within every sliding window):")
print(bpt.pivot(index="model", columns="storage", values="bytes_per_token").to_string())
print("\nbytes per token once past every sliding window (only global layers grow):")
print(bpt.pivot(index="model", columns="storage", values="past_window").to_string())

# %% [markdown]
# On Gemma 3-4B the paper's 5 KB is one residual vector per token (2,560 x 2 bytes), while
# its diagram rebuilds layer *l*'s K/V from *that layer's* residual: 34 of them, 170 KB,
# more than the 136 KB of K/V. On the grouped-query models here, the per-layer residuals
# cost 1.5x-3.5x the K/V they replace. Only on a multi-head shape (Llama 2-7B, every head
# with its own K/V) are they smaller: half the K/V.
#
# The 136 KB counts all 34 layers. Gemma 3 has five sliding-window layers (1,024 tokens on
# the 4B model, 512 on our 270M) for every global one, and a sliding layer never holds more
# than its window: past 1,024 tokens the standard cache grows by the 5 global layers' K/V
# only, 20 KiB per token, and one residual vector is a quarter of that, not 1/27. The
# paper's 20-turn test (103 MB / 136 KiB is about 760 tokens) stays inside the window, where
# the 136 KB holds; a longer chat does not. Per-layer residuals are dropped past a sliding
# layer's window too (`every_layer` keeps them for the global layers only); one residual or
# a token id per token must stay for every token, since a re-prefill rebuilds every layer.

# %%
# NBVAL_IGNORE_OUTPUT
model = kd.load_model(MODELS[0])
TURNS = ex.load_data("chat_20_turns.json")["turns"]
WINDOW, NEW = 64, 8
chats = [
    ex.run_chat(model, pol, max_new_tokens=NEW, progress=False)
    for pol in (kd.FullKV(), kd.KVDirect(WINDOW, exact_shapes=False))
]
# 4 turns only: the re-prefill modes redo every layer for the evicted tokens at every step,
# and min_bytes keeps K/V on every layer of a grouped-query model (it is the full cache).
# Window 16 here: the streaming replay then runs its 64-row chunks from turn 2 on, so the
# 4 turns show its growth rather than its first chunk filling
SHORT_WINDOW = 16
short = [
    ex.run_chat(
        model,
        kd.KVDirect(SHORT_WINDOW, checkpoint=mode, exact_shapes=False),
        turns=TURNS[:4],
        max_new_tokens=NEW,
        progress=False,
    ).assign(window=SHORT_WINDOW)
    for mode in ("min_bytes", "token_ids", "first_layer")
]
timeline = pd.concat(chats, ignore_index=True).assign(window=WINDOW)
timeline = pd.concat([timeline, *short], ignore_index=True)  # one row per policy and turn
mine = bytes_per_token_table([Shape.of(model)])
# the peak of a step is what it holds plus what it builds and frees while it runs
replayed = timeline.policy.isin(["KVDirect[token_ids]", "KVDirect[first_layer]"])
judged = timeline.assign(
    transient_bytes=timeline.rebuilt_bytes_max, replay=replayed.map({True: "streaming"})
)
price = formula_cost(
    model, [kd.KVDirect(SHORT_WINDOW, checkpoint=m) for m in ("token_ids", "first_layer")]
)
v = vd.claim4(judged, mine, cost=pd.DataFrame(price))

# %% [markdown]
# How many tokens each turn adds depends on the replies, and a greedy reply can change at a
# near-tie from one machine to another: the bytes after each turn are printed with the CPU,
# unchecked. What every machine must reproduce is checked instead: at every turn, each
# policy holds exactly what the shape formulas say for the tokens it has seen (FullKV and
# min_bytes: K/V for every token; the other KV-Direct modes: K/V for the window plus one
# checkpoint per token).

# %%
# NBVAL_IGNORE_OUTPUT
print(f"on this CPU ({CPU}):")
last = timeline.groupby("policy", sort=False).tail(1).set_index("policy")
print(
    last[
        ["turn", "total_tokens", "kv_bytes", "residual_bytes", "token_ids_bytes", "held_bytes"]
    ].to_string()
)

# %%
# NBVAL_CHECK_OUTPUT
per_token = {s.split()[0]: b for s, b in zip(mine.storage, mine.bytes_per_token, strict=True)}


def expected(policy, tokens, window=WINDOW):
    """(K/V bytes, checkpoint bytes) the shape formulas give after `tokens` tokens."""
    mode = policy.removeprefix("KVDirect[").removesuffix("]")
    if policy == "FullKV" or mode == "min_bytes":  # min_bytes: K/V are the smaller here
        return tokens * per_token["K/V"], 0
    return min(tokens, window) * per_token["K/V"], tokens * per_token[mode]


want = [
    expected(p, t, w)
    for p, t, w in zip(timeline.policy, timeline.total_tokens, timeline.window, strict=True)
]
timeline["formula_kv"], timeline["formula_checkpoints"] = zip(*want, strict=True)
timeline["as_formula"] = (timeline.kv_bytes == timeline.formula_kv) & (
    timeline.residual_bytes + timeline.token_ids_bytes == timeline.formula_checkpoints
)
print("bytes held after every turn equal the shape formulas, per policy:")
print(timeline.groupby("policy", sort=False).as_formula.all().to_string())

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
# `WINDOW` tokens' worth, by the shape formula above (checked). The checkpoints do not:
# per-layer residuals grow with every token and cost more than the K/V they replace on this
# model; `min_bytes` chooses K/V on every layer (grouped-query K/V are smaller than
# d_model), so it *is* the full cache; `token_ids` and `first_layer` hold 4 or d_model x 4
# bytes per token but re-run every layer for the evicted tokens at every step (and
# materialise their K/V transiently). The process's peak RSS is dominated by the model
# itself at this scale.
#
# The verdict, from `verdicts.claim4`, weighs the claim's two halves and what buys them:
# "per-token bytes" (some mode's checkpoint is smaller than the K/V it replaces: the 5 KB vs
# 136 KB half), "flat peak" (some mode's **peak** (bytes held after a step plus the bytes
# it built and freed while running: the replay's K/V) grows with the tokens at <= 10% of
# the full cache's rate: the 42 MB vs 103 MB half), and "without recomputing every layer" (a
# mode meeting both is not a re-prefill). Each mode is judged as what it is: `every_layer`
# is the paper's diagram, `first_layer` its 5 KB figure, `token_ids` the no-checkpoint
# reference. The replay modes here stream: layer *l*'s K/V of the evicted tokens are built,
# used and freed before layer *l*+1. The headline carries the price, from the FLOPs formulas
# at 1,024 tokens (the full study's below adds claim 6's measured tokens/s). Each is a ratio
# of bytes per token, the same on any machine, so the verdict and which parts held are
# checked; the measured text is printed with the CPU.

# %%
# NBVAL_CHECK_OUTPUT
print(vd.table([v])[["claim", "paper", "verdict"]].to_string(index=False))
print("price:", v.price)
print(vd.parts_table([v])[["part", "paper", "held"]].to_string(index=False))
modes = pd.DataFrame(v.numbers["modes"]).T
print(modes[["bytes_per_token", "smaller", "flat", "replays"]].to_string())

# %%
# NBVAL_IGNORE_OUTPUT
print(f"on this CPU ({CPU}):")
with pd.option_context("display.max_colwidth", None):
    display(vd.parts_table([v]))

# %%
assert timeline.groupby("policy").as_formula.all().all(), "bytes held differ from the formulas"
assert last.loc["KVDirect[every_layer]", "held_bytes"] > last.loc["FullKV", "held_bytes"]
at4 = timeline[timeline.turn == 4].set_index("policy")
assert at4.loc["KVDirect[min_bytes]", "held_bytes"] == at4.loc["FullKV", "held_bytes"]
# grouped-query K/V are smaller than the per-layer residuals: only the re-prefill modes bound
# memory, so the claim holds under that condition
assert v.verdict == vd.CONDITIONAL and not v.parts[2].held

# %% [markdown]
# ## The full study (stored results)
# `kvdirect-interp study --size full --claims 4` ran the whole 20-turn chat with replies of
# up to 48 tokens (stopping at the end-of-turn token), window 64, under FullKV and every
# KV-Direct mode: bytes held by kind after every turn, bytes rebuilt per step and the
# process's peak RSS per turn. The re-prefill modes ran with `exact_shapes=False` (one
# chunk per re-prefill; with exact shapes every evicted decode token is replayed alone at
# every step, hours per chat on 2 cores): what they hold does not depend on it, and rows
# say which ran. Where a model's table is in `results/`, it is shown with the run that made
# it and judged by `verdicts.claim4` on its peak (held + transient) per turn, each replay
# variant its own series (one-shot: every layer replayed at once before the step; streaming:
# layer by layer), with the price from claim 6's decode rows (it needs FullKV and at least
# one KV-Direct mode); a model or mode not yet studied says so.

# %%
# NBVAL_IGNORE_OUTPUT
from kvdirect_interp import results, study  # noqa: E402
from kvdirect_interp.policies import registry  # noqa: E402

stored = results.stored_tables(4, STUDIED)
for name, table in stored.items():
    facts = results.facts(name)  # the model's shape and sizes, stored with its tables
    absent = sorted({"FullKV", *registry.kvdirect_modes()} - set(table.policy))
    print("  not yet measured:", absent or "none")
    kinds = table.melt(
        id_vars=["policy", "turn"],
        value_vars=["kv_bytes", "residual_bytes", "token_ids_bytes"],
        var_name="kind",
        value_name="bytes",
    )
    px.area(
        kinds.assign(mb=kinds.bytes / 1e6, kind=kinds.kind.str.removesuffix("_bytes")),
        x="turn",
        y="mb",
        color="kind",
        facet_col="policy",
        labels={"mb": "MB held", "turn": "chat turn"},
        title=f"{name}: bytes held by kind after each of 20 turns (replies up to 48 tokens)",
    ).update_xaxes(dtick=5).show()
    model_mb = facts.weights_bytes / 1e6
    fig = px.line(
        table.assign(rss_mb=table.peak_rss_bytes / 1e6),
        x="turn",
        y="rss_mb",
        color="policy",
        markers=True,
        labels={"rss_mb": "process peak RSS (MB)", "turn": "chat turn"},
        title=f"{name}: peak RSS per turn next to the model's own {model_mb:.0f} MB of weights",
    )
    fig.add_hline(y=model_mb, line_dash="dot", annotation_text="model weights")
    fig.update_xaxes(dtick=5).show()
    turns = results.claim4_turns(table)
    peak = turns.assign(
        peak_mb=(turns.held_bytes + turns.transient_bytes) / 1e6,
        series=turns.policy + turns.replay.map(lambda r: f" ({r})" if r else ""),
    )
    px.line(
        peak,
        x="total_tokens",
        y="peak_mb",
        color="series",
        markers=True,
        log_y=True,
        labels={"peak_mb": "peak MB (held + transient)", "total_tokens": "tokens in the chat"},
        title=f"{name}: peak bytes per turn (held + the replay's transient) vs FullKV",
    ).show()
    kvd = table.policy.str.startswith("KVDirect")
    if "FullKV" in set(table.policy) and kvd.any():
        ((_, v),) = results.judged(
            4, table, facts, results.claim6_cost(results.load(name, 6), facts.arch)
        )
        print(f"  {v.headline()}")
        with pd.option_context("display.max_colwidth", None):
            display(vd.table([v]))
            display(vd.parts_table([v]))
    else:
        print("  no verdict yet: claim 4 is judged on FullKV and at least one KV-Direct mode")

# %%
# the stored rows hold what the shape formulas say (`expected` above: this model, window 64)
if MODELS[0] in stored:
    table = stored[MODELS[0]]
    assert set(table.window) == {WINDOW}
    want = [expected(p, t) for p, t in zip(table.policy, table.total_tokens, strict=True)]
    kv, checkpoints = (pd.Series(w, index=table.index) for w in zip(*want, strict=True))
    assert (table.kv_bytes == kv).all()
    assert (table.residual_bytes + table.token_ids_bytes == checkpoints).all()

# %% [markdown]
# **A stored unit measured again.** The FullKV chat's first two turns are run again here
# through the study's own measurement function and compared with its stored rows: tokens
# per turn and bytes held by kind, exactly (peak RSS and seconds belong to the process and
# the machine). A reply can change at a near-tie on other kernels, so the rows are asserted
# only on the kind of machine that made the table (same CPU, same threads).

# %%
# NBVAL_IGNORE_OUTPUT
recheck = None
if MODELS[0] in stored:
    table = stored[MODELS[0]]
    recheck = study.recheck(model, MODELS[0], 4, table, overrides={"turns": 2}, policy="FullKV")
    print(f"same machine as the stored run: {results.same_machine(table)}")
    display(recheck)

# %%
if recheck is not None and results.same_machine(stored[MODELS[0]]):
    assert recheck.equal.all(), "the stored unit does not reproduce"
