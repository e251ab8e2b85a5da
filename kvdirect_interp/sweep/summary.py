"""Statistics of a sweep over a batch of prompt pairs: per cell, the mean over pairs with a
bootstrap interval, and the normalised recovery of that mean."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics import bootstrap_means, percentile_interval

CELL = ["layer", "position", "patched"]


def sweep_summary(
    df: pd.DataFrame, *, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> pd.DataFrame:
    """One row per cell (layer, position, patched) of a `patch_sweep` (or
    `attribution_sweep`) table: n_pairs, the metric's mean over the prompt pairs (the batch
    rows) with its percentile bootstrap interval (mean_low, mean_high), and the recovery of
    the mean, (mean - mean baseline_clean) / (mean baseline_donor - mean baseline_clean),
    with its interval from the same resamples of pairs (recovery_low, recovery_high).

    The pairs are resampled with replacement, `n_resamples` times with one seeded draw for
    every cell. One pair has no interval (NaN bounds); the recovery is NaN where the two
    baselines' means are equal (nothing to recover)."""
    metric = df.attrs.get("metric")
    need = {*CELL, "batch", "baseline_clean", "baseline_donor", metric}
    if metric is None or not need <= set(df.columns):
        raise ValueError(
            "sweep_summary needs a patch_sweep or attribution_sweep table (attrs['metric'] "
            f"and columns {sorted(need - {None})}); got columns {list(df.columns)}"
        )
    table = df.sort_values([*CELL, "batch"], kind="stable")
    n_pairs = table.batch.nunique()
    cells = table.groupby(CELL, sort=False).size()
    if (cells != n_pairs).any():
        raise ValueError("every cell must hold one row per pair (batch row); some do not")

    def matrix(column: str) -> np.ndarray:  # [cells, pairs]
        return table[column].to_numpy(np.float64).reshape(len(cells), n_pairs)

    value, clean, donor = matrix(metric), matrix("baseline_clean"), matrix("baseline_donor")
    draws = [bootstrap_means(m, n_resamples, seed) for m in (value, clean, donor)]
    mean_low, mean_high = percentile_interval(draws[0], level)
    with np.errstate(divide="ignore", invalid="ignore"):
        span = draws[2] - draws[1]
        resampled = np.where(span != 0, (draws[0] - draws[1]) / span, np.nan)
        full_span = donor.mean(1) - clean.mean(1)
        recovery = np.where(full_span != 0, (value.mean(1) - clean.mean(1)) / full_span, np.nan)
    rec_low, rec_high = _interval_where_defined(resampled, level)
    out = cells.index.to_frame(index=False)
    out["n_pairs"] = n_pairs
    out["mean"], out["mean_low"], out["mean_high"] = value.mean(1), mean_low, mean_high
    out["recovery"], out["recovery_low"], out["recovery_high"] = recovery, rec_low, rec_high
    out.attrs.update(df.attrs, level=level, n_resamples=n_resamples, seed=seed)
    return out


def _interval_where_defined(resampled: np.ndarray, level: float):
    """The interval of each row's defined resamples (a resample whose baselines coincide
    has no recovery); NaN bounds where fewer than all are defined, so that an interval
    never silently rests on a subset of the draws."""
    defined = ~np.isnan(resampled).any(axis=1)
    low = np.full(resampled.shape[0], np.nan)
    high = low.copy()
    if defined.any():
        low[defined], high[defined] = percentile_interval(resampled[defined], level)
    return low, high
