"""Claim 5, about agreement with the full cache: KV-Direct keeps 100% token match where it
holds fewer bytes than FullKV, while the eviction baselines fall to 5-28%, judged on the 95%
intervals of their means over prompts, with the price of KV-Direct's 100% in the headline."""

from __future__ import annotations

import math

import pandas as pd

from .price import cost_ratios, mode_of, price_of
from .rows import (
    CONDITIONAL,
    FAILS,
    HOLDS,
    NOT_SETTLED,
    REFERENCE_POLICIES,
    REPLAY_MODES,
    Part,
    Verdict,
    check,
    frame,
    number,
)

AGREEMENT = ("policy", "prompt", "token_match", "kl_max", "bytes_held", "fullkv_bytes")
INTERVALS = ("policy", "token_match", "token_match_low", "token_match_high")


def _iv(r) -> str:
    low, high = r.token_match_low, r.token_match_high
    if math.isnan(low) or math.isnan(high):
        return f"{r.token_match:.0%} [no interval]"
    return f"{r.token_match:.0%} [{low:.0%}, {high:.0%}]"


def claim5(
    agreement: pd.DataFrame,
    intervals: pd.DataFrame,
    *,
    group: str = "budget",
    baseline_ceiling: float = 0.28,
    cost: pd.DataFrame | None = None,
) -> Verdict:
    """Claim 5, "KV-Direct keeps 100% token match at every budget; baselines fall to 5-28%".

    Input: agreement, `experiments.agreement_table`'s rows (policy, prompt, token_match,
    kl_max, bytes_held, fullkv_bytes and the `group` column) with KVDirect[...] rows and
    baseline rows (any policy but KVDirect[...], FullKV, NoCache); intervals, one row per
    baseline and `group` value (policy, group, token_match, token_match_low,
    token_match_high: the mean over prompts and its 95% interval, `results.claim5_summary`);
    group: what a "budget" is in this slice ("budget" on the budget grid; "matched", the
    KV-Direct configuration whose bytes a baseline was given, at equal memory); cost
    (optional): `price.cost_ratios`' table, for the price.
    Parts: "KV-Direct 100% at every budget": every KVDirect row has token_match == 1.0 and at
    least one holds fewer bytes than FullKV (a row holding >= FullKV's bytes is no evidence;
    modes that never hold fewer are named). "baselines fall to 5-28%": held where every
    baseline's interval lies at or below baseline_ceiling (default 0.28) in every group;
    refuted where one lies above it (its low bound over); otherwise not settled (an interval
    straddles the ceiling, or one prompt gives none).
    Rule: FAILS if the KV-Direct part does not hold; else HOLDS if the baselines' part holds,
    CONDITIONAL if it is refuted (that half does not reproduce), NOT_SETTLED otherwise.
    """
    what = "agreement table"
    df = frame(agreement, what, (*AGREEMENT, group))
    check(df, what, present=(group, "prompt"), names=("policy",))
    df = check(df, what, numeric=("token_match",), hi=1.0)
    df = check(df, what, numeric=("kl_max",), lo=None)
    df = check(df, what, numeric=("bytes_held", "fullkv_bytes"))
    ceiling = number(baseline_ceiling, "baseline_ceiling")
    is_kvd = df.policy.str.startswith("KVDirect")
    kvd, base = df[is_kvd], df[~is_kvd & ~df.policy.isin(REFERENCE_POLICIES)]
    if kvd.empty or base.empty:
        raise ValueError(
            f"{what} needs KVDirect[...] rows and baseline rows (policies other than "
            f"KVDirect[...], {list(REFERENCE_POLICIES)}); got policies "
            f"{sorted(set(df.policy))}"
        )
    iv = frame(intervals, "intervals", (*INTERVALS, group))
    check(iv, "intervals", present=(group,), names=("policy",))
    iv = check(iv, "intervals", numeric=("token_match",), hi=1.0)
    for c in ("token_match_low", "token_match_high"):  # NaN: one prompt, no interval
        iv[c] = pd.to_numeric(iv[c]).astype(float)
    if iv.duplicated(["policy", group]).any():
        raise ValueError(f"intervals: a (policy, {group}) pair appears twice")
    iv = iv.set_index(["policy", group])
    wanted = set(base[["policy", group]].itertuples(index=False, name=None))
    missing = sorted(wanted - set(iv.index), key=str)
    if missing:
        raise ValueError(f"intervals lack (policy, {group}) pair(s) {missing[:5]} of the rows")
    iv = iv.loc[sorted(wanted, key=str)]

    below, smaller = kvd[kvd.token_match < 1.0], kvd[kvd.bytes_held < kvd.fullkv_bytes]
    no_saving = sorted(set(kvd.policy) - set(smaller.policy))
    kvd_ok = below.empty and not smaller.empty
    text = (
        f"{len(kvd) - len(below)}/{len(kvd)} KV-Direct rows 100% (max KL "
        f"{kvd.kl_max.max():.3g}); {len(smaller)} row(s) hold fewer bytes than FullKV"
    )
    if not below.empty:
        worst = below.loc[below.token_match.idxmin()]
        text += (
            f"; below 100%: {sorted(set(below.policy))} (worst {worst.token_match:.0%}, "
            f"{worst.policy} at {group} {worst[group]})"
        )
    if no_saving:
        text += f"; {no_saving} hold >= FullKV's bytes in every row: not evidence"

    over = iv[iv.token_match_low > ceiling]
    cleared = iv[iv.token_match_high <= ceiling]
    straddle = iv.drop(index=over.index).drop(index=cleared.index)
    base_text = (
        f"95% intervals of mean token match per baseline and {group}: {len(cleared)}/{len(iv)} "
        f"at or below {ceiling:.0%}, {len(over)} above, {len(straddle)} not settled; means "
        f"{iv.token_match.min():.0%}-{iv.token_match.max():.0%} over "
        f"{base.policy.nunique()} baseline(s), {base[group].nunique()} {group} value(s)"
    )
    for name, rows in (("above", over), ("not settled", straddle)):
        if not rows.empty:
            worst = rows.sort_values("token_match", ascending=False).head(4)
            base_text += f"; {name}: " + ", ".join(
                f"{p} at {g} {_iv(r)}" for (p, g), r in worst.iterrows()
            )
    base_held = over.empty and straddle.empty
    parts = (
        Part(
            "KV-Direct 100% at every budget", "100% token match at every cache budget", text, kvd_ok
        ),
        Part("baselines fall to 5-28%", "baselines 5-28%", base_text, base_held),
    )
    if not kvd_ok:
        verdict = FAILS
    else:
        verdict = HOLDS if base_held else CONDITIONAL if not over.empty else NOT_SETTLED
    # the price of the 100%: which modes give it at fewer bytes than FullKV, at what compute
    saving = sorted({mode_of(p) for p in smaller.policy} - {None})
    costs = cost_ratios(cost)
    if not kvd_ok:
        price = ""
    else:
        direct = [m for m in saving if m not in REPLAY_MODES]
        how = "with K/V rebuilt per layer" if direct else "only by re-running every layer"
        cost_text = price_of(direct or saving, costs)
        price = f"100% at fewer bytes than FullKV {how} ({', '.join(direct or saving)})"
        price += f": {cost_text}" if cost_text else ""
    return Verdict.of(
        "5 100% token match at every budget",
        "100% vs 5-28% for baselines",
        verdict,
        parts,
        {
            "kvdirect_min_token_match": float(kvd.token_match.min()),
            "kvdirect_rows_fewer_bytes": len(smaller),
            "modes_without_saving": no_saving,
            "modes_saving": saving,
            "baseline_token_match": {
                f"{p}@{g}": [float(r[c]) for c in INTERVALS[1:]] for (p, g), r in iv.iterrows()
            },
            "baselines_above": len(over),
            "baselines_not_settled": len(straddle),
            "costs": costs,
        },
        price=price,
    )
