"""Claim 6, about speed: recomputing K/V from residuals against reading them from where
they are kept, per storage tier."""

from __future__ import annotations

import pandas as pd

from .rows import CONDITIONAL, FAILS, HOLDS, Part, Verdict, check, frame


def claim6(timings: pd.DataFrame) -> Verdict:
    """Claim 6, "recomputation runs up to 5x faster than reading cached tensors" (a best case).

    Input: `experiments.rebuild_vs_read`'s DataFrame (batch, evicted_tokens, rebuild_s, read_s,
    rebuild_over_read; optional tier: ram / disk / gpu). Times must be > 0 and the ratio must
    equal rebuild_s / read_s.
    Parts: "faster than reading somewhere": min rebuild_over_read < 1; "up to 5x faster": min
    rebuild_over_read <= 1/5. Rule: HOLDS if some configuration reaches 1/5; CONDITIONAL if
    the rebuild is faster somewhere but never 5x; FAILS if it is never faster. The best
    configuration and the range are reported.
    """
    what, cols = (
        "rebuild-vs-read table",
        ("batch", "evicted_tokens", "rebuild_s", "read_s", "rebuild_over_read"),
    )
    df = frame(timings, what, cols, ("tier",))
    df = check(df, what, numeric=cols, names=("tier",) if "tier" in df.columns else ())
    if (df[["rebuild_s", "read_s", "rebuild_over_read"]] <= 0).any().any():
        raise ValueError(f"{what}: rebuild_s, read_s and rebuild_over_read must be > 0")
    wrong = df.index[
        (df.rebuild_over_read - df.rebuild_s / df.read_s).abs() > 1e-6 * df.rebuild_over_read
    ].tolist()
    if wrong:
        raise ValueError(f"{what}: rebuild_over_read != rebuild_s / read_s at row(s) {wrong[:5]}")
    best = df.loc[df.rebuild_over_read.idxmin()]
    lo, hi = float(df.rebuild_over_read.min()), float(df.rebuild_over_read.max())
    config = {
        "batch": int(best.batch),
        "evicted_tokens": int(best.evicted_tokens),
        **({"tier": str(best.tier)} if "tier" in df.columns else {}),
    }
    where = f"batch {config['batch']}, {config['evicted_tokens']} evicted tokens" + (
        f", tier {config['tier']}" if "tier" in config else ""
    )
    speed = f"{1 / lo:.1f}x faster" if lo < 1 else f"{lo:.1f}x slower"
    parts = (
        Part(
            "faster than reading somewhere",
            "recomputation beats reading",
            f"best rebuild/read {lo:.2f} ({speed}) at {where}; range {lo:.2f}-{hi:.2f} "
            f"over {len(df)} configuration(s)",
            lo < 1,
        ),
        Part(
            "up to 5x faster",
            "up to 5x faster at moderate batch sizes",
            f"best speed-up {1 / lo:.2f}x (needs >= 5x)",
            lo <= 1 / 5,
        ),
    )
    return Verdict.of(
        "6 recomputing K/V beats reading them",
        "up to 5x faster than reading",
        HOLDS if lo <= 1 / 5 else CONDITIONAL if lo < 1 else FAILS,
        parts,
        {
            "min_rebuild_over_read": lo,
            "max_rebuild_over_read": hi,
            "best": config,
            "configurations": len(df),
        },
    )
