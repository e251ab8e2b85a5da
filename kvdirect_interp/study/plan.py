"""The study's sizes: per claim, the settings of every unit at `smoke` and at `full`.

`smoke` runs every claim in about a minute on a tiny model (the tests run it); `full` is the
research-scale run (hours on a real model on CPU). Order is deterministic, and is the order
sharding counts in (run.py). Every unit calls the measurement function of `experiments`
(or `kv.reconstruction_report`) the notebooks and `verify` use; measure.py says how.

full, per claim:
1. `reconstruction_report` on every layer, fp32 and bf16, shapes same / one_token /
   one_token_padded8, 8 prompts of 32-512 tokens (long_prompts.json, cut). Unit: (prompt,
   tokens, dtype).
2. `patching_kl` at every layer, for every residual site the model has, over 40 cross-task
   pairs (tasks.json: each of the 10 pairs of tasks x prompts 0-3), both cut to the shorter
   one's token length (patching needs equal shapes; rows say the lengths); kl_last is the
   single-position contrast. Unit: (pair, site).
3. `no_cache_runs`: 16 prompts (prompts.json's 6, chat turns 0-9 as one-message chats) x
   64 new tokens, greedy and seeded sampling (seeds 0, 1, 2; temperature 1): token match,
   first divergence, per-step logit drift and margin. Unit: (prompt, sampling).
4. `run_chat`: the 20-turn chat, replies capped at 48 tokens (stopping at end-of-turn),
   FullKV and every KV-Direct mode (window 64): bytes held by kind after every turn, bytes
   rebuilt per step, peak RSS per turn. The re-prefill modes run twice: replaying every
   layer at once before each step ("one_shot", the units stored before streaming existed,
   whose settings name no replay) and layer by layer inside the step ("streaming").
   Unit: (policy, replay): a chat's state carries over turns.
   The re-prefill modes (first_layer, token_ids) run with exact_shapes=False (rows say
   so): with exact shapes they replay every evicted decode token as its own one-token
   forward pass at every step, about 1,000 passes per step by turn 20 (hours per chat on
   2 cores); in one chunk it is one re-prefill per step. What they hold is the same either
   way (a function of the tokens seen); their tokens are FullKV's by test only with exact
   shapes, so the turn lengths (and hence total_tokens) may differ from FullKV's.
5. `agreement_table`: 16 prompts of 256-1021 tokens (long_prompts.json, text i cut to
   256 + 51 i tokens), budgets 16, 32, 64, 128, 256, 48 new tokens, every eviction
   baseline: token match of the free run, first divergence (common_prefix), mean and max
   KL per step under teacher forcing, bytes held. every_layer and min_bytes on every prompt
   at every budget too; the re-prefill modes (first_layer, token_ids, ~10x slower per
   step; their tokens are FullKV's by test) on prompts 0 and 15 at budgets 16 and 256.
   Equal memory: on the first 8 prompts, every baseline also runs at each budget whose K/V
   bytes equal what a KV-Direct mode holds at the end of the run (`equal_memory_budgets`
   over `memory.held_after`, the policies' own bytes_per_token, equal to every stored
   KV-Direct row's bytes; modes holding at least the full cache's bytes are left out).
   SnapKV is the published method (observation window 32, kernel 5, average pooling, the
   prompt compressed once, the cache then growing by one per token; at equal memory it runs
   at the budget that ends the run holding the matched bytes, `baseline_budget`), and
   SnapKVPerStep the per-step rule run before 2026-12-07; their units name their settings.
   Long context (`source` "long_context"): 4 texts of our own cut to 4,000 tokens, budgets
   64-1,024, every baseline and every_layer; token_ids (streaming, exact shapes) on text 0
   at budget 1,024. Unit: (prompt, budget, policy).
6. `rebuild_vs_read` at layer 0: rebuild vs a RAM copy vs a read from a file on local disk
   with the page cache dropped (posix_fadvise(POSIX_FADV_DONTNEED); rows say so and name
   the filesystem), batch 1, 4, 16, N = 64, 128, ..., 4096, and where a CUDA device is
   present the GPU tier too (the rebuild on the GPU vs a read from pinned host memory into
   it; rows name the device in `gpu`). Unit: (batch, N). Then
   `decode_side_by_side`, end to end: every registered policy (budget / window 64)
   generating 16 tokens greedily up to 256 and 1,024 tokens of context (long prompt 15 cut
   to 240 and 1,008 tokens), the policies in turns over 3 rounds after one untimed warm-up
   generation each: prefill seconds, median seconds per decode step, tokens/s with and
   without the prefill (medians over the rounds, with the decode rate's range), each
   policy's rate over FullKV's within a round, bytes held. Unit: (context).

Not yet measured (say so wherever the results are shown):
- Claim 5's KL is summarised per unit (mean and max over steps), not stored per step.
- Claim 6 times the rebuild on the loaded model's dtype only (fp32), one layer; its decode
  speed is three generations per (policy, context) at batch 1 (each a median over 15
  steps).
- Claim 1's prompts are the first 8 long prompts cut to 32-512 tokens.
"""

from __future__ import annotations

import dataclasses
from itertools import combinations

from ..memory import Shape, held_after, kv_bytes_per_token
from ..policies import FullKV, registry
from ..resources import load_data
from .facts import ModelFacts, facts_of
from .units import Unit

SIZES = ("smoke", "full")
CLAIMS = (1, 2, 3, 4, 5, 6)
# the claims whose units must have a node to themselves (study/cluster.py runs them as one
# job on an exclusive node, after the others on one machine): claim 6 times the rebuild,
# the reads and the decode steps, which other work on the node would slow. The other
# claims' numbers do not depend on what else runs, so their shards may share a node.
EXCLUSIVE_CLAIMS = (6,)
SHAPES = ["same", "one_token", "one_token_padded8"]
CLAIM5_BUDGETS = (16, 32, 64, 128, 256)  # the full plan's budget grid (equal-memory ones aside)


def _claim1(size: str, facts: ModelFacts | None) -> list[dict]:
    lengths = [16, 32] if size == "smoke" else [32, 64, 96, 128, 192, 256, 384, 512]
    return [
        {"prompt": i, "tokens": n, "dtype": dtype, "shapes": SHAPES}
        for dtype in ("float32", "bfloat16")  # dtype-major: one model load per dtype
        for i, n in enumerate(lengths)
    ]


def _claim2(size: str, facts: ModelFacts) -> list[dict]:
    tasks = list(load_data("tasks.json")["tasks"])
    pairs = [([a, i], [b, i]) for i in range(4) for a, b in combinations(tasks, 2)]
    pairs = pairs[:1] if size == "smoke" else pairs
    # facts.sites: no resid_mid on NeoX
    return [{"clean": c, "donor": d, "site": s} for c, d in pairs for s in facts.sites]


def _claim3(size: str, facts: ModelFacts | None) -> list[dict]:
    if size == "smoke":
        prompts, seeds, n_new = [["prompts", 0], ["chat", 0]], [0], 8
    else:
        prompts = [["prompts", i] for i in range(6)] + [["chat", i] for i in range(10)]
        seeds, n_new = [0, 1, 2], 64
    samplings = [{"sampling": "greedy", "seed": None}] + [
        {"sampling": "sample", "seed": s} for s in seeds
    ]
    return [{"prompt": p, **s, "new_tokens": n_new} for p in prompts for s in samplings]


def _claim4(size: str, facts: ModelFacts | None) -> list[dict]:
    turns, cap, window = (2, 8, 16) if size == "smoke" else (20, 48, 64)
    units = []
    replays = registry.replay_modes()
    for name in ["FullKV", *registry.kvdirect_modes()]:
        s = {"policy": name, "window": window, "turns": turns, "max_new_tokens": cap}
        if name in replays:
            if size == "full":
                s["exact_shapes"] = False  # see the module docstring: hours per chat otherwise
            # one-shot (the units stored before streaming existed: no key) and streaming
            units.append(s if size == "full" else {**s, "replay": "one_shot"})
            s = {**s, "replay": "streaming"}
        units.append(s)
    return units


def _claim5(size: str, facts: ModelFacts) -> list[dict]:
    if size == "smoke":
        lengths, budgets, n_new = [48, 64], [16], 8
        rebuild_prompts, replay = 1, ([0], [16])
    else:
        lengths = [256 + 51 * i for i in range(16)]  # 256 ... 1021: long_prompts.json
        budgets, n_new = list(CLAIM5_BUDGETS), 48
        rebuild_prompts, replay = len(lengths), ([0, 15], [16, 256])
    replays = registry.replay_modes()
    rebuilds = [m for m in registry.kvdirect_modes() if m not in replays]
    units = []
    for i, n in enumerate(lengths):  # prompt-major: its FullKV reference is made once
        for b in budgets:
            names = list(registry.baselines())
            # the rebuild modes everywhere; the replay ones, ~10x slower per step and
            # FullKV's tokens by test, at two corners (the issue allows them fewer)
            if i < rebuild_prompts:
                names += rebuilds
            if i in replay[0] and b in replay[1]:
                names += replays
            units += [_claim5_unit(i, n, b, p, n_new) for p in names]
        if i < len(lengths) // 2 or size == "smoke":  # equal memory: half the prompts
            equal = set(equal_memory_budgets(facts.shape, n + n_new - 1, budgets).values())
            extra = sorted(
                {(baseline_budget(p, b, n_new), p) for b in equal for p in registry.baselines()}
                - {(b, p) for b in budgets for p in registry.baselines()}
            )
            units += [_claim5_unit(i, n, b, p, n_new) for b, p in extra]
    return units + _long_context(size)


def _long_context(size: str) -> list[dict]:
    """Claim 5's long-context slice: eviction is built for long prompts. 4 texts of our own
    (long_context.json) cut to 4,000 tokens, budgets 64-1,024, every baseline and
    every_layer; token_ids (a replay mode, streaming, exact shapes) on the first text at
    budget 1,024. Smoke: one text cut to 64 tokens, budget 12."""
    if size == "smoke":
        texts, n, budgets, replay = [0], 64, [12], {(0, 12)}  # not the grid's 16
    else:
        texts, n, budgets, replay = [0, 1, 2, 3], 4000, LONG_BUDGETS, {(0, 1024)}
    names = [*registry.baselines(), "KVDirect[every_layer]"]
    units = []
    for i in texts:
        for b in budgets:
            extra = ["KVDirect[token_ids]"] if (i, b) in replay else []
            for p in [*names, *extra]:
                units.append(
                    {
                        **_claim5_unit(i, n, b, p, 48 if size == "full" else 8),
                        "source": "long_context",
                    }
                )
    return units


LONG_BUDGETS = (64, 128, 256, 512, 1024)  # the long-context slice's budgets


# policies whose registered settings changed after units of theirs were stored: their units
# name the settings, so a stored unit of the old policy is never taken for the new one
# (SnapKV became the published compress-once method; the per-step rule is SnapKVPerStep)
NAMED_SETTINGS = ("SnapKV", "SnapKVPerStep")


def _claim5_unit(i: int, n: int, budget: int, policy: str, n_new: int) -> dict:
    unit = {"prompt": i, "tokens": n, "budget": budget, "policy": policy, "new_tokens": n_new}
    if policy in NAMED_SETTINGS:
        fields = dataclasses.asdict(registry.make(policy, budget))
        unit["settings"] = {k: v for k, v in fields.items() if k != "budget"}
    return unit


def baseline_budget(policy: str, kv_budget: int, n_new: int) -> int:
    """The budget at which baseline `policy` ends a run of n_new tokens holding `kv_budget`
    tokens' K/V: a policy that compresses the prompt once (SnapKV) then grows by one per
    token fed (n_new - 1: the last new token is picked, not fed); the others hold their
    budget. At least 1."""
    grows = getattr(registry.make(policy, max(2, kv_budget)), "compress_once", False)
    return max(1, kv_budget - (n_new - 1)) if grows else kv_budget


def equal_memory_budgets(shape, seen: int, windows) -> dict[tuple[str, int], int]:
    """(KV-Direct mode, window) -> the K/V budget (tokens) whose bytes equal what that mode
    holds at the end of a run that has seen `seen` tokens (prompt + new tokens - 1: the
    last new token is picked, not fed) with that window (`memory.held_after`). Modes
    holding at least the full cache's bytes are left out (a baseline there would evict
    nothing). `shape`: a `memory.Shape`, or a loaded model to take it from."""
    shape = shape if isinstance(shape, Shape) else Shape.of(shape)
    kv, full = kv_bytes_per_token(shape), held_after(shape, FullKV(), 0, seen)
    out = {}
    for name, make in registry.kvdirect_modes().items():
        for w in windows:
            held = held_after(shape, make(w), w, seen)
            if held < full:
                out[name, w] = int(held // kv)
    return out


# the policies claim 6's decode units time, as stored (2026-12-02): SnapKV there is the
# per-step rule (now SnapKVPerStep) and the replay modes ran one-shot. Timing them again
# under today's registry (published SnapKV, streaming replay) needs a quiet machine and
# makes new units: until then the plan keeps the stored ones
DECODE_POLICIES = (
    "FullKV",
    "NoCache",
    "KVDirect[every_layer]",
    "KVDirect[first_layer]",
    "KVDirect[token_ids]",
    "KVDirect[min_bytes]",
    "WindowOnly",
    "StreamingLLM",
    "H2O",
    "SnapKV",
    "TOVA",
)


def _claim6(size: str, facts: ModelFacts | None) -> list[dict]:
    if size == "smoke":
        batches, lengths, repeats = [1, 2], [16, 64], 2
        contexts, budget, n_new, prompt, rounds = [24], 8, 4, 0, 2
    else:
        batches, lengths, repeats = [1, 4, 16], [64 * 2**i for i in range(7)], 5  # 64 ... 4096
        # the longest long prompt; 3 rounds of every policy in turns per context
        contexts, budget, n_new, prompt, rounds = [256, 1024], 64, 16, 15, 3
    rebuild = [
        {"batch": b, "tokens": n, "layer": 0, "repeats": repeats, "disk": True}
        for b in batches
        for n in lengths
    ]
    # end to end: every policy's decode after a long prompt, one unit per context timing
    # every policy in turns (speed.decode_side_by_side), so their ratios are side by side;
    # after the rebuild units, so those keep their places in the plan (sharding counts)
    decode = [
        {
            "measure": "decode",
            "policies": list(DECODE_POLICIES),  # FullKV first: the ratios' reference
            "context": c,
            "budget": budget,
            "new_tokens": n_new,
            "prompt": prompt,
            "rounds": rounds,
        }
        for c in contexts
    ]
    return rebuild + decode


_PLANS = {1: _claim1, 2: _claim2, 3: _claim3, 4: _claim4, 5: _claim5, 6: _claim6}


# the claims whose plan asks the model: 2 (which residual sites it has), 5 (its shape, for
# the equal-memory budgets)
NEEDS_MODEL = (2, 5)


def plan(model_name: str, model, claim: int, size: str) -> list[Unit]:
    """Every unit of `claim` at `size` on `model`, in the deterministic order sharding counts
    in. `model`: the loaded model or its `ModelFacts` (facts.py: what a stored study keeps
    of it) for the claims in NEEDS_MODEL; else it may be None."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; accepted: {list(SIZES)}")
    if claim not in _PLANS:
        raise ValueError(f"unknown claim {claim!r}; accepted: {list(CLAIMS)}")
    if model is None and claim in NEEDS_MODEL:
        raise ValueError(
            f"claim {claim}'s plan needs the loaded model or its ModelFacts "
            f"(claims {NEEDS_MODEL} do)"
        )
    facts = None if model is None else facts_of(model, model_name)
    return [Unit(model_name, claim, s) for s in _PLANS[claim](size, facts)]
