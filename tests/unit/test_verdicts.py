"""verdicts.py on synthetic measurements: every outcome of every claim is reached, each part
changes the outcome (or, for reported-only parts, its own held flag), and bad input is refused."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from kvdirect_interp import verdicts as vd
from kvdirect_interp.verdicts import CONDITIONAL, FAILS, HOLDS


def held(v: vd.Verdict) -> dict[str, bool]:
    return {p.name: p.held for p in v.parts}


def differs_only_in(a: vd.Verdict, b: vd.Verdict, part: str) -> bool:
    """a and b disagree on `part` and on no other part."""
    ha, hb = held(a), held(b)
    return [n for n in ha if ha[n] != hb[n]] == [part]


# ---- the row and the tables -------------------------------------------------------------


def test_verdict_measured_is_written_from_parts():
    parts = (vd.Part("a", "says a", "saw a", True), vd.Part("b", "says b", "saw b", False))
    v = vd.Verdict.of("0 test", "paper", HOLDS, parts, {"x": 1}, note="extra")
    assert v.measured == "a [held]: saw a; b [not held]: saw b; extra"
    with pytest.raises(ValueError, match="written from the parts"):
        vd.Verdict("0 test", "paper", HOLDS, parts, "typed by hand", {})
    with pytest.raises(ValueError, match="verdict must be one of"):
        vd.Verdict.of("0 test", "paper", "mostly", parts)
    with pytest.raises(ValueError, match="non-empty"):
        vd.Verdict.of("0 test", "paper", HOLDS, ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.verdict = FAILS


def test_tables_have_one_row_per_verdict_and_per_part():
    vs = [
        vd.claim2(
            kl_whole_max=0.0,
            kl_single_position_max=0.3,
            layers=4,
            sites=["resid_pre"],
            task_pairs=1,
        ),
        vd.claim6(timings([0.5, 2.0])),
    ]
    t = vd.table(vs)
    assert list(t.columns) == ["claim", "paper", "verdict", "price", "measured"]
    assert t.verdict.tolist() == [HOLDS, CONDITIONAL]
    p = vd.parts_table(vs)
    assert list(p.columns) == ["claim", "part", "paper", "measured", "held"]
    assert len(p) == sum(len(v.parts) for v in vs)


def test_mirrored_constants_agree_with_their_homes():
    from kvdirect_interp.kv import REBUILD_SHAPES
    from kvdirect_interp.policies.kvdirect import MODES, REPLAY_MODES

    assert set(vd.KVDIRECT_MODES) == set(MODES)
    assert set(vd.REPLAY_MODES) == set(REPLAY_MODES)
    assert set(vd.REBUILD_SHAPES) == set(REBUILD_SHAPES)


# ---- claim 1 ----------------------------------------------------------------------------


def report(n=3, same=(), one=(), padded=None, skip_rot_k=False) -> pd.DataFrame:
    """A reconstruction report; `same`, `one`, `padded`: layers whose k differs at that shape."""
    shapes = [("same", same), ("one_token", one)] + (
        [("one_token_padded8", padded)] if padded is not None else []
    )
    rows = []
    for shape, bad in shapes:
        for layer in range(n):
            for t in ("k", "v", "rot_k"):
                if skip_rot_k and t == "rot_k":
                    rows.append((layer, t, shape, None, pd.NA, math.nan, pd.NA))
                    continue
                eq = not (layer in bad and t == "k")
                rows.append(
                    (
                        layer,
                        t,
                        shape,
                        f"blocks.{layer}.attn.hook_{t}",
                        eq,
                        0.0 if eq else 2e-7,
                        0 if eq else 3,
                    )
                )
    return pd.DataFrame(
        rows,
        columns=[
            "layer",
            "tensor",
            "shape",
            "reference",
            "bitwise_equal",
            "max_abs_err",
            "max_ulp",
        ],
    ).astype({"bitwise_equal": "boolean", "max_ulp": "Int64"})


def test_claim1_outcomes_and_parts():
    h, c, f = vd.claim1(report()), vd.claim1(report(one=(1,))), vd.claim1(report(same=(0,)))
    assert (h.verdict, c.verdict, f.verdict) == (HOLDS, CONDITIONAL, FAILS)
    assert differs_only_in(h, c, "any shape")
    assert differs_only_in(h, f, "same GEMM shape")
    assert "property of GEMM shapes and kernels" in c.measured
    assert "2/3 layers bitwise" in c.measured and "3 ULP" in c.measured
    assert json.dumps(h.numbers)


def test_claim1_unfired_hooks_and_padded_rows_are_reported_not_judged():
    v = vd.claim1(report(skip_rot_k=True))
    assert v.verdict == HOLDS and "6 row(s) not compared" in v.measured
    p = vd.claim1(report(one=(0,), padded=()))
    assert p.verdict == CONDITIONAL and len(p.parts) == 2
    assert "padded to 8 rows (not judged): 3/3 layers bitwise" in p.measured
    # padded rows failing do not change the verdict either
    assert vd.claim1(report(padded=(2,))).verdict == HOLDS


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.drop(columns="max_ulp"), r"lacks column\(s\) \['max_ulp'\]"),
        (lambda d: d.iloc[0:0], "is empty"),
        (
            lambda d: d.assign(bitwise_equal=d.bitwise_equal.mask(d.index == 0)),
            "'bitwise_equal' is missing",
        ),
        (lambda d: d.assign(shape=d["shape"].replace("one_token", "two_tokens")), "unknown shape"),
        (lambda d: d[d["shape"] == "same"], "no compared row of shape 'one_token'"),
        (lambda d: d[~((d["shape"] == "one_token") & (d.layer == 2))], r"layer\(s\) \[2\]"),
        (lambda d: "not a frame", "must be a pandas DataFrame"),
    ],
)
def test_claim1_refuses_bad_input(mutate, match):
    with pytest.raises(ValueError, match=match):
        vd.claim1(mutate(report()))


# ---- claim 2 ----------------------------------------------------------------------------


def c2(whole=0.0, single=0.4, **kw):
    args = {"layers": 30, "sites": ["resid_pre", "resid_post"], "task_pairs": 3} | kw
    return vd.claim2(kl_whole_max=whole, kl_single_position_max=single, **args)


def test_claim2_outcomes_and_parts():
    h, f = c2(), c2(whole=1e-12)
    assert (h.verdict, f.verdict) == (HOLDS, FAILS)
    assert differs_only_in(h, f, "whole residual patched")
    assert "by construction of a layered computation" in h.measured
    assert "30 layers x resid_pre, resid_post x 3 task pair(s)" in h.measured
    # the contrast is reported (its own held flag) but never decides the verdict
    no_contrast = c2(single=0.0)
    assert no_contrast.verdict == HOLDS and differs_only_in(h, no_contrast, "single position")
    assert "no contrast seen" in no_contrast.measured
    assert c2(sites=2).verdict == HOLDS
    assert c2(layers=np.int64(30), whole=np.float64(0.0)).numbers["layers"] == 30


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"whole": math.nan}, "kl_whole_max"),
        ({"single": "0"}, "kl_single_position_max"),
        ({"layers": 0}, "layers"),
        ({"sites": []}, "sites"),
        ({"sites": "resid_pre"}, "sites"),
        ({"task_pairs": 1.5}, "task_pairs"),
    ],
)
def test_claim2_refuses_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        c2(**kw)


# ---- claim 3 ----------------------------------------------------------------------------

SAME = {"token_match": 1.0, "first_divergence": None, "divergence_margin": None}


def diverged(margin, match=0.75, step=6):
    return {"token_match": match, "first_divergence": step, "divergence_margin": margin}


def test_claim3_outcomes_and_parts():
    noise = 1e-5
    h = vd.claim3([SAME, SAME], logit_noise=noise)
    c = vd.claim3([SAME, diverged(5e-5)], logit_noise=noise)
    f = vd.claim3([SAME, diverged(0.8)], logit_noise=noise)
    assert (h.verdict, c.verdict, f.verdict) == (HOLDS, CONDITIONAL, FAILS)
    assert differs_only_in(h, c, "tokens identical")
    assert differs_only_in(c, f, "divergences at near-ties")
    assert "max logit drift 1.0e-05 (reported, not a failure)" in h.measured
    assert "no divergence" in h.measured and "runs [1] diverge beyond fp noise" in f.measured
    # the factor is the rule's knob: 5e-5 is a near-tie at 10x noise, not at 1x
    assert vd.claim3([diverged(5e-5)], logit_noise=noise, noise_margin_factor=1).verdict == FAILS
    frame = pd.DataFrame([SAME | {"run": "chat"}, diverged(5e-5) | {"run": "story"}])
    assert vd.claim3(frame, logit_noise=noise).numbers["identical_runs"] == 1


@pytest.mark.parametrize(
    "runs, kw, match",
    [
        ([diverged(None)], {}, "'divergence_margin' is missing"),
        ([SAME | {"first_divergence": 3}], {}, "token_match 1.0 has a first_divergence"),
        ([SAME | {"token_match": 1.5}], {}, r"must lie in \[0.0, 1.0\]"),
        ([diverged(-1.0)], {}, "'divergence_margin' must lie"),
        ([SAME], {"logit_noise": math.nan}, "logit_noise"),
        (
            [{"token_match": 1.0}],
            {},
            r"lacks column\(s\) \['first_divergence', 'divergence_margin'\]",
        ),
        ([], {}, "is empty"),
    ],
)
def test_claim3_refuses_bad_input(runs, kw, match):
    with pytest.raises(ValueError, match=match):
        vd.claim3(runs, **({"logit_noise": 1e-5} | kw))


# ---- claim 4 ----------------------------------------------------------------------------

KV = 46_080  # SmolLM2-135M fp32 K/V bytes per token
STORAGE = {
    "K/V (standard cache)": KV,
    "every_layer (resid_pre x L)": 69_120,
    "min_bytes (per layer min)": KV,
    "first_layer (one residual)": 2_304,
    "token_ids": 4,
}


def bpt(**override) -> pd.DataFrame:
    table = {label: override.get(label.split()[0], b) for label, b in STORAGE.items()}
    return pd.DataFrame(
        {"model": "m", "storage": list(table), "bytes_per_token": list(table.values())}
    )


def turns(
    modes: dict[str, float], tokens=(100, 220, 340, 460), window=32, transient=None
) -> pd.DataFrame:
    """Per-turn held bytes: FullKV grows by KV per token; each mode keeps `window` tokens'
    K/V and grows by its slope (bytes per evicted token); `transient`: per mode, the bytes
    per evicted token its largest step builds and frees (0 where not given)."""
    transient = transient or {}
    rows = [
        {
            "policy": "FullKV",
            "turn": i + 1,
            "total_tokens": t,
            "held_bytes": KV * t,
            "kv_bytes": KV * t,
            "transient_bytes": 0,
        }
        for i, t in enumerate(tokens)
    ]
    for policy, slope in modes.items():
        rows += [
            {
                "policy": policy,
                "turn": i + 1,
                "total_tokens": t,
                "kv_bytes": KV * window,
                "held_bytes": KV * window + int(slope * (t - window)),
                "transient_bytes": int(transient.get(policy, 0) * (t - window)),
            }
            for i, t in enumerate(tokens)
        ]
    return pd.DataFrame(rows)


def test_claim4_outcomes_and_parts():
    h = vd.claim4(turns({"KVDirect[every_layer]": 2000}), bpt(every_layer=2000))
    per_token = vd.claim4(turns({"KVDirect[every_layer]": 2000}), bpt(every_layer=60_000))
    growing = vd.claim4(turns({"KVDirect[every_layer]": 30_000}), bpt(every_layer=2000))
    replay = vd.claim4(turns({"KVDirect[token_ids]": 2000}), bpt(token_ids=2000))
    assert (h.verdict, per_token.verdict, growing.verdict, replay.verdict) == (
        HOLDS,
        FAILS,
        FAILS,
        CONDITIONAL,
    )
    # the third part asks which mode meets both memory parts: without one, it cannot hold
    assert held(per_token) == {
        "per-token bytes": False,
        "flat peak": True,
        "without recomputing every layer": False,
    }
    assert held(growing) == {
        "per-token bytes": True,
        "flat peak": False,
        "without recomputing every layer": False,
    }
    assert "no mode meets both memory parts" in growing.measured
    assert differs_only_in(h, replay, "without recomputing every layer")
    assert "re-prefill: every layer re-run for evicted tokens" in replay.measured
    assert json.dumps(h.numbers)


def test_claim4_on_a_grouped_query_shape_is_conditional():
    # SmolLM2-like: every_layer costs more than K/V, min_bytes the same; the small modes replay
    v = vd.claim4(
        turns(
            {
                "KVDirect[every_layer]": 69_120,
                "KVDirect[min_bytes]": KV,
                "KVDirect[first_layer]": 2_304,
                "token_ids": 4,
            }
        ),
        bpt(),
    )
    assert v.verdict == CONDITIONAL
    assert held(v) == {
        "per-token bytes": True,
        "flat peak": True,
        "without recomputing every layer": False,
    }
    assert (
        v.numbers["modes"]["first_layer"]["flat"] and not v.numbers["modes"]["every_layer"]["flat"]
    )
    assert "every_layer 69,120 B (1.5x)" in v.measured
    # the slope rule's knob: first_layer's 5% of FullKV's growth is not flat at 1%
    assert (
        vd.claim4(turns({"KVDirect[first_layer]": 2_304}), bpt(), slope_fraction=0.01).verdict
        == FAILS
    )


def test_claim4_measures_growth_once_the_window_is_full():
    # turn 1 (20 tokens) fits in the 48-token window: token_ids holds K/V for every token
    # there, like FullKV; from turn 2 on, 4 bytes per token. The window's filling is no growth.
    tokens, window = (20, 60, 100, 140), 48
    rows = [
        {"policy": "FullKV", "turn": i + 1, "total_tokens": t, "kv_bytes": KV * t}
        for i, t in enumerate(tokens)
    ] + [
        {
            "policy": "KVDirect[token_ids]",
            "turn": i + 1,
            "total_tokens": t,
            "kv_bytes": KV * min(t, window),
        }
        for i, t in enumerate(tokens)
    ]
    df = pd.DataFrame(rows).assign(transient_bytes=0)
    df["held_bytes"] = df.kv_bytes + (df.policy != "FullKV") * 4 * df.total_tokens
    v = vd.claim4(df, bpt())
    assert v.verdict == CONDITIONAL and held(v)["flat peak"]
    assert v.numbers["modes"]["token_ids"]["slope_vs_fullkv"] < 0.001
    assert "once the K/V window is full" in v.measured
    # over every turn, the filling would count as growth: more than the 10% allowed
    ids = df[df.policy != "FullKV"]
    assert np.polyfit(ids.total_tokens, ids.held_bytes, 1)[0] / KV > 0.10
    # a window full at one turn only: no growth to measure after it, so every turn counts
    assert vd.claim4(df[df.turn <= 2], bpt()).verdict == FAILS


def cost(modes: dict[str, tuple[float, float | None]], context=1024) -> pd.DataFrame:
    """Claim 6's decode rows in short: FullKV at 1 GFLOP and 100 tokens/s; per policy
    (FLOPs ratio, tokens/s ratio or None)."""
    rows = [{"policy": "FullKV", "context": context, "flops_per_step": 1e9, "decode_tok_s": 100.0}]
    rows += [
        {
            "policy": p,
            "context": context,
            "flops_per_step": 1e9 * f,
            "decode_tok_s": float("nan") if t is None else 100.0 * t,
        }
        for p, (f, t) in modes.items()
    ]
    return pd.DataFrame(rows)


def test_claim4_judges_the_peak_held_plus_transient():
    # a one-shot re-prefill: 4 B held per token, but every layer's K/V built at each step
    one_shot = vd.claim4(
        turns({"KVDirect[token_ids]": 4}, transient={"KVDirect[token_ids]": 0.95 * KV}), bpt()
    )
    assert one_shot.verdict == FAILS and not held(one_shot)["flat peak"]
    r = one_shot.numbers["modes"]["token_ids"]
    assert r["held_slope_vs_fullkv"] < 0.001 and 0.94 < r["slope_vs_fullkv"] < 0.96
    assert "held 0% + transient 95%" in one_shot.measured
    assert one_shot.price.startswith("no mode's peak is both smaller per token and flat")
    # streaming: one layer's K/V and the carried hidden state
    streaming = vd.claim4(
        turns({"KVDirect[token_ids]": 4}, transient={"KVDirect[token_ids]": 0.08 * KV}), bpt()
    )
    assert streaming.verdict == CONDITIONAL and differs_only_in(one_shot, streaming, "flat peak")
    # the transient alone can cross the threshold (the knob: 10% of FullKV's growth)
    assert (
        vd.claim4(
            turns({"KVDirect[token_ids]": 4}, transient={"KVDirect[token_ids]": 0.11 * KV}), bpt()
        ).verdict
        == FAILS
    )


def test_claim4_headline_carries_the_price():
    c = cost({"KVDirect[token_ids]": (850.0, 0.03), "KVDirect[every_layer]": (1.2, 0.8)})
    replay = vd.claim4(turns({"KVDirect[token_ids]": 4}), bpt(), cost=c)
    assert replay.verdict == CONDITIONAL
    assert replay.price == (
        "memory bounded only by re-running every layer (token_ids): 850x FullKV's FLOPs per "
        "step, 0.03x its decode tokens/s at 1,024 tokens (token_ids)"
    )
    assert replay.headline() == f"{CONDITIONAL}: {replay.price}"
    direct = vd.claim4(turns({"KVDirect[every_layer]": 2000}), bpt(every_layer=2000), cost=c)
    assert direct.verdict == HOLDS
    assert direct.price.startswith("bounded by every_layer (K/V rebuilt per layer): 1.2x")
    # without a cost table the price names the mechanism, no numbers
    assert vd.claim4(turns({"KVDirect[token_ids]": 4}), bpt()).price == (
        "memory bounded only by re-running every layer (token_ids)"
    )
    # tokens/s not measured: FLOPs only
    c2 = cost({"KVDirect[token_ids]": (850.0, None)})
    assert "tokens/s" not in vd.claim4(turns({"KVDirect[token_ids]": 4}), bpt(), cost=c2).price


def test_claim4_judges_each_replay_variant_as_its_own_series():
    a = turns({"KVDirect[token_ids]": 4}, transient={"KVDirect[token_ids]": 0.95 * KV})
    b = turns({"KVDirect[token_ids]": 4}, transient={"KVDirect[token_ids]": 0.05 * KV})
    df = pd.concat(
        [
            a.assign(replay=np.where(a.policy == "FullKV", None, "one_shot")),
            b[b.policy != "FullKV"].assign(replay="streaming"),
        ],
        ignore_index=True,
    )
    v = vd.claim4(df, bpt())
    assert set(v.numbers["modes"]) == {"token_ids (one_shot)", "token_ids (streaming)"}
    assert v.verdict == CONDITIONAL
    assert "meeting both memory parts: token_ids (streaming) (re-prefill" in v.measured
    assert v.numbers["modes"]["token_ids (streaming)"]["role"] == vd.ROLES["token_ids"]


@pytest.mark.parametrize(
    "t, b, match",
    [
        (
            turns({"KVDirect[first_layer]": 1}).query("policy != 'FullKV'"),
            bpt(),
            "needs turns for 'FullKV'",
        ),
        (turns({"H2O": 1}), bpt(), "at least one KV-Direct mode"),
        (turns({"KVDirect[token_ids]": 1}), bpt().iloc[:4], "one storage row per mode"),
        (turns({"KVDirect[token_ids]": 1, "token_ids": 1}), bpt(), "one turns series"),
        (turns({"KVDirect[token_ids]": 1}, tokens=(100,)), bpt(), ">= 2 turns"),
        (turns({"KVDirect[token_ids]": 1}).assign(held_bytes=7), bpt(), "do not grow"),
        (pd.concat([turns({"token_ids": 1})] * 2), bpt(), "appears twice"),
        (turns({"token_ids": 1}).assign(held_bytes=math.nan), bpt(), "'held_bytes' is missing"),
        (turns({"token_ids": 1}), pd.concat([bpt(), bpt().assign(model="n")]), "2 models"),
        (
            turns({"token_ids": 1}).drop(columns="kv_bytes"),
            bpt(),
            r"lacks column\(s\) \['kv_bytes'\]",
        ),
        (
            turns({"token_ids": 1}).drop(columns="transient_bytes"),
            bpt(),
            r"lacks column\(s\) \['transient_bytes'\]",
        ),
    ],
)
def test_claim4_refuses_bad_input(t, b, match):
    with pytest.raises(ValueError, match=match):
        vd.claim4(t, b)


# ---- claim 5 ----------------------------------------------------------------------------


def agreement(kvd=1.0, base=(0.2, 0.1), saves=True, extra=()) -> pd.DataFrame:
    """Two prompts x two budgets; KVDirect[every_layer] matches `kvd` (at budget 16, prompt 1),
    the baselines `base` per prompt; `extra`: more (policy, token_match, saves) rows per cell."""
    rows = []
    for budget in (16, 32):
        for prompt in (0, 1):
            full = 10_000
            cells = [
                ("KVDirect[every_layer]", kvd if (budget, prompt) == (16, 1) else 1.0, saves),
                ("WindowOnly", base[prompt], True),
                ("H2O", base[prompt], True),
                ("NoCache", 1.0, False),
                *extra,
            ]
            rows += [
                {
                    "policy": p,
                    "budget": budget,
                    "prompt": prompt,
                    "token_match": m,
                    "kl_max": 0.0 if m == 1.0 else 3.0,
                    "bytes_held": full // 2 if s else full,
                    "fullkv_bytes": full,
                }
                for p, m, s in cells
            ]
    return pd.DataFrame(rows)


def intervals(df: pd.DataFrame, bounds=None, group="budget") -> pd.DataFrame:
    """Per baseline and group: the mean over prompts and an interval, (mean, mean) unless
    `bounds` gives (low, high) for (policy, group)."""
    bounds = bounds or {}
    base = df[~df.policy.str.startswith("KVDirect") & ~df.policy.isin(["FullKV", "NoCache"])]
    out = base.groupby(["policy", group], as_index=False).token_match.mean()
    lows, highs = [], []
    for p, g, m in zip(out.policy, out[group], out.token_match, strict=True):
        lo, hi = bounds.get((p, g), (m, m))
        lows.append(lo)
        highs.append(hi)
    return out.assign(token_match_low=lows, token_match_high=highs)


def claim5(df, bounds=None, **kw):
    return vd.claim5(df, intervals(df, bounds), **kw)


def test_claim5_outcomes_and_parts():
    h, c = claim5(agreement()), claim5(agreement(base=(0.2, 0.5)))
    f, no_saving = claim5(agreement(kvd=0.9)), claim5(agreement(saves=False))
    assert (h.verdict, c.verdict, f.verdict, no_saving.verdict) == (
        HOLDS,
        CONDITIONAL,
        FAILS,
        FAILS,
    )
    assert differs_only_in(h, c, "baselines fall to 5-28%")
    assert differs_only_in(h, f, "KV-Direct 100% at every budget")
    assert differs_only_in(h, no_saving, "KV-Direct 100% at every budget")
    assert "2/2 at or below 28%" not in h.measured  # 2 baselines x 2 budgets
    assert "4/4 at or below 28%, 0 above, 0 not settled; means 15%-15%" in h.measured
    assert "above: H2O at 16 35% [35%, 35%]" in c.measured
    assert "worst 90%, KVDirect[every_layer] at budget 16" in f.measured
    assert "hold >= FullKV's bytes in every row: not evidence" in no_saving.measured


def test_claim5_is_judged_on_intervals_not_point_means():
    df = agreement(base=(0.1, 0.4))  # means 25%: under the ceiling as a point
    straddles = {("H2O", 16): (0.1, 0.4)}
    v = claim5(df, straddles)
    assert v.verdict == vd.NOT_SETTLED and not held(v)["baselines fall to 5-28%"]
    assert "not settled: H2O at 16 25% [10%, 40%]" in v.measured
    assert claim5(df, {("H2O", 16): (0.29, 0.4)}).verdict == CONDITIONAL  # wholly above
    assert claim5(df, {("H2O", 16): (0.1, 0.28)}).verdict == HOLDS  # at the ceiling
    # one prompt gives no interval: not settled, whatever the mean
    assert claim5(df, {("H2O", 16): (math.nan, math.nan)}).verdict == vd.NOT_SETTLED
    assert claim5(df, straddles, baseline_ceiling=0.5).verdict == HOLDS


def test_claim5_a_full_cache_mode_is_named_but_does_not_spoil_the_evidence():
    v = claim5(agreement(extra=[("KVDirect[min_bytes]", 1.0, False)]))
    assert v.verdict == HOLDS and v.numbers["modes_without_saving"] == ["KVDirect[min_bytes]"]
    assert "['KVDirect[min_bytes]'] hold >= FullKV's bytes" in v.measured


def test_claim5_at_equal_memory_groups_by_the_matched_configuration():
    df = agreement().assign(matched=lambda d: "first_layer w" + d.budget.astype(str))
    v = vd.claim5(df, intervals(df, group="matched"), group="matched")
    assert v.verdict == HOLDS and "per baseline and matched: 4/4" in v.measured
    with pytest.raises(ValueError, match="lacks column"):
        vd.claim5(df.drop(columns="matched"), intervals(df, group="matched"), group="matched")


def test_claim5_headline_carries_the_price():
    replay = agreement(
        saves=False,
        extra=[("KVDirect[token_ids]", 1.0, True), ("KVDirect[first_layer]", 1.0, True)],
    )
    c = cost({"KVDirect[token_ids]": (850.0, 0.03), "KVDirect[first_layer]": (900.0, 0.02)})
    v = claim5(replay, cost=c)
    assert v.verdict == HOLDS and v.numbers["modes_saving"] == ["first_layer", "token_ids"]
    assert v.price == (
        "100% at fewer bytes than FullKV only by re-running every layer (first_layer, "
        "token_ids): 850x FullKV's FLOPs per step, 0.03x its decode tokens/s at 1,024 tokens "
        "(token_ids)"
    )
    direct = claim5(agreement(), cost=cost({"KVDirect[every_layer]": (1.5, 0.7)}))
    assert direct.price.startswith("100% at fewer bytes than FullKV with K/V rebuilt per layer")
    assert claim5(agreement(kvd=0.5)).price == ""


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d[d.policy.str.startswith("KVDirect")], "baseline rows"),
        (lambda d: d[~d.policy.str.startswith("KVDirect")], "KVDirect"),
        (
            lambda d: d.assign(token_match=d.token_match.mask(d.index == 3)),
            "'token_match' is missing",
        ),
        (lambda d: d.drop(columns="kl_max"), r"lacks column\(s\) \['kl_max'\]"),
        (lambda d: d.assign(bytes_held=-1), "'bytes_held' must lie"),
        (lambda d: d.iloc[0:0], "is empty"),
    ],
)
def test_claim5_refuses_bad_input(mutate, match):
    with pytest.raises(ValueError, match=match):
        vd.claim5(mutate(agreement()), intervals(agreement()))


def test_claim5_refuses_intervals_that_do_not_cover_the_rows():
    df = agreement()
    iv = intervals(df)
    with pytest.raises(ValueError, match=r"intervals lack \(policy, budget\) pair"):
        vd.claim5(df, iv[iv.policy != "H2O"])
    with pytest.raises(ValueError, match="appears twice"):
        vd.claim5(df, pd.concat([iv, iv]))
    with pytest.raises(ValueError, match="token_match_high"):
        vd.claim5(df, iv.drop(columns="token_match_high"))


# ---- claim 6 ----------------------------------------------------------------------------


def timings(ratios, tier=None) -> pd.DataFrame:
    rows = [
        {
            "batch": b,
            "evicted_tokens": n,
            "read_s": 0.01,
            "rebuild_s": 0.01 * r,
            "rebuild_over_read": r,
        }
        for (b, n), r in zip([(1, 64), (4, 512), (8, 1024)][: len(ratios)], ratios, strict=True)
    ]
    df = pd.DataFrame(rows)
    return df if tier is None else df.assign(tier=tier[: len(df)])


def test_claim6_outcomes_and_parts():
    h, c, f = (
        vd.claim6(timings([2.0, 0.15])),
        vd.claim6(timings([2.0, 0.5])),
        vd.claim6(timings([2.0, 1.2])),
    )
    assert (h.verdict, c.verdict, f.verdict) == (HOLDS, CONDITIONAL, FAILS)
    assert differs_only_in(h, c, "up to 5x faster")
    assert differs_only_in(c, f, "faster than reading somewhere")
    assert "best rebuild/read 0.15 (6.7x faster) at batch 4, 512 evicted tokens" in h.measured
    assert "range 0.15-2.00 over 2 configuration(s)" in h.measured
    assert "1.2x slower" in f.measured
    assert vd.claim6(timings([0.2, 3.0])).verdict == HOLDS  # exactly 5x counts
    t = vd.claim6(timings([3.0, 2.0, 0.1], tier=["ram", "ram", "disk"]))
    assert "tier disk" in t.measured and t.numbers["best"]["tier"] == "disk"


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.assign(rebuild_over_read=d.rebuild_over_read * 2), "!= rebuild_s / read_s"),
        (lambda d: d.assign(read_s=0.0), "must be > 0"),
        (
            lambda d: d.drop(columns="read_s"),
            r"lacks column\(s\) \['read_s'\].*optional: \['tier'\]",
        ),
        (lambda d: d.assign(rebuild_s=math.nan), "'rebuild_s' is missing"),
        (lambda d: d.assign(tier=["ram", None]), "'tier' is missing"),
    ],
)
def test_claim6_refuses_bad_input(mutate, match):
    with pytest.raises(ValueError, match=match):
        vd.claim6(mutate(timings([2.0, 0.5])))
