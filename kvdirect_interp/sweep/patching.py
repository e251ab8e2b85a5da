"""patch_sweep: the donor's residual patched into the clean run at every layer (and
position), as one tidy table; the sweep package's public entry (its engine: engine.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .._checks import check_layers
from ..hooks import check_site, forward, recovery, sweep_inputs
from ..patch_metrics import is_positionwise, resolve
from ..tokens import TokensLike
from .engine import check_cells, run

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@torch.no_grad()
def patch_sweep(
    model: TransformerBridge,
    clean: TokensLike,
    donor: TokensLike,
    *,
    site: str = "resid_pre",
    metric: str | Callable = "kl_to_donor",
    per_position: bool = False,
    layers: Sequence[int] | None = None,
    progress: bool = True,
    exact: bool = True,
    chunk_size: int | None = None,
    check: int | str = 8,
) -> pd.DataFrame:
    """Patch the donor's residual into the clean run at every layer; a tidy DataFrame.

    per_position=False: the whole residual patched; one row per (layer, batch, position)
    with the metric at that output position. per_position=True: one position patched at a
    time; one row per (layer, batch, patched position) with the metric at the last position.
    clean, donor: text, a list of texts or tokens [batch, pos] of equal shape (a batch of
    prompt pairs, one per row).

    metric: a name in METRICS, a `patch_metrics` object (LogitDiff(answer, distractor),
    LogProb(token), KL(reference, reverse)) or any f(patched, clean, donor) -> [batch, pos],
    all logits [batch, pos, d_vocab]; positionwise metrics (the built-in ones) are given the
    last position alone, [batch, 1, d_vocab], in per-position sweeps: the same values.
    Columns: layer, batch, position, patched ("all" or "single"), the metric (named by it),
    baseline_clean and baseline_donor (the metric of the unpatched run and of the donor's
    own run at that output position), and recovery = (value - baseline_clean) /
    (baseline_donor - baseline_clean): 0 where the patch leaves the clean run's value, 1
    where it gives the donor's (NaN where the two baselines are equal: nothing to recover).
    `sweep_summary(df)` gives per-cell means over the pairs with bootstrap intervals.

    exact=True: every cell's logits are bitwise those of one patched forward pass
    (`patch_residual`), computed from the patched layer on (the `sweep` package);
    exact=False: batched variants that recompute only the positions from the patched one on,
    faster, with other bits; `check` cells (evenly spread, or "all") are recomputed exactly
    and the largest differences reported. chunk_size: in the fast mode, the most cells (of
    one position) per batched pass (default: sized to bound memory). df.attrs says what ran:
    metric, mode, path ("layered", "batched", or "full" where no layered pass is available,
    e.g. with the fast path off), reason, checked_cells, max_abs_logit_diff and
    max_abs_metric_diff (None when exact), and in the exact mode tail_positions (patched
    positions whose cells recomputed only the positions from theirs on, after checking that
    this gives the full pass's bits).
    """
    check_site(model, site)
    layers = check_layers(model, layers)
    metric_name, metric_fn = resolve(metric)
    if not isinstance(exact, bool):
        raise ValueError(f"exact must be True or False, got {exact!r}")
    if not exact:
        check_cells([], check)  # a bad check is refused before any work
    clean_toks, donor_trace = sweep_inputs(model, clean, donor, site=site, layers=layers)
    clean_logits = forward(model, clean_toks).detach()
    rows, info = run(
        model,
        clean_toks,
        donor_trace,
        clean_logits,
        site=site,
        layers=layers,
        per_position=per_position,
        metric_fn=metric_fn,
        positionwise=is_positionwise(metric_fn),
        exact=exact,
        chunk_size=chunk_size,
        check=check,
        progress=progress,
    )
    columns = ["layer", "batch", "position", "patched", metric_name]
    df = pd.DataFrame(rows, columns=[*columns, "baseline_clean", "baseline_donor"])
    df["recovery"] = recovery(df, metric_name)
    df.attrs.update(metric=metric_name, **info)
    return df
