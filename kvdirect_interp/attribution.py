"""Attribution patching: the first-order estimate of a whole per-position patch sweep from
one forward and one backward pass of the clean run (Nanda, "Attribution Patching", 2023).

Patching the donor's residual d at (layer, position) into the clean run, whose residual
there is c, changes a metric m by about <d - c, dm/dx> with the gradient taken on the clean
run. Every cell's gradient comes from the same backward pass: a zero tensor is added to
the residual stream at every patched layer (x + 0 is x, so the forward pass is the clean
run's) and the gradient of m with respect to it is dm/dx there. The estimate is exact for a
metric linear in the residual and degrades as the patch moves the run away from the clean
one; `attribution_error` measures how far, against the exact `patch_sweep`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ._checks import check_layers
from .hooks import check_site, edit_hooks, forward, recovery, sweep_inputs
from .patch_metrics import is_positionwise, resolve
from .tokens import TokensLike

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def attribution_sweep(
    model: TransformerBridge,
    clean: TokensLike,
    donor: TokensLike,
    *,
    metric: str | Callable = "kl_to_donor",
    site: str = "resid_pre",
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The estimate of `patch_sweep(..., per_position=True)`: one row per (layer, batch,
    patched position) with the metric at the last position estimated as baseline_clean +
    attribution, attribution = <donor - clean residual, dmetric/dresidual> (float64).

    The columns are patch_sweep's (layer, batch, position, patched="single", the metric,
    baseline_clean, baseline_donor, recovery) plus `attribution`, so `sweep_summary` and
    `attribution_error` read both tables alike. The metric must be differentiable and
    positionwise (the built-in KL, LogitDiff and LogProb are; top_token_is_donor is not).
    Costs one donor forward pass (its residuals), one clean forward pass with gradients and
    one backward pass, whatever the number of cells.
    """
    check_site(model, site)
    layers = check_layers(model, layers)
    metric_name, metric_fn = resolve(metric)
    if not (is_positionwise(metric_fn) and getattr(metric_fn, "differentiable", False)):
        raise ValueError(
            f"attribution needs a differentiable, positionwise metric (kl_to_donor, "
            f"kl_to_clean, the reverse KLs, LogitDiff, LogProb); {metric_name!r} is not"
        )
    toks, donor_trace = sweep_inputs(model, clean, donor, site=site, layers=layers)
    n_batch, n_pos = toks.shape
    d_model = model.cfg.d_model
    like = donor_trace.resid[site]  # dtype and device of the residual stream
    zeros = {
        l: torch.zeros(
            n_batch, n_pos, d_model, dtype=like.dtype, device=like.device, requires_grad=True
        )
        for l in layers
    }
    seen: dict[int, torch.Tensor] = {}

    def add_zero(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def edit(x: torch.Tensor) -> torch.Tensor:  # x [batch, pos, d_model]
            seen[layer] = x.detach()  # the clean residual
            return x + zeros[layer]

        return edit

    hooks = [h for l in layers for h in edit_hooks(l, site, add_zero(l))]
    with torch.enable_grad():
        logits = forward(model, toks, hooks=hooks)
        refs = (logits.detach()[:, -1:], donor_trace.logits[:, -1:])
        value = metric_fn(logits[:, -1:], *refs)  # [batch, 1]
        grads = torch.autograd.grad(value.sum(), [zeros[l] for l in layers])
    base_clean = value.detach().double()[:, 0]
    base_donor = metric_fn(refs[1], *refs).double()[:, 0]
    rows = []
    for l, grad in zip(layers, grads, strict=True):
        diff = donor_trace.at(site, l).double() - seen[l].double()
        change = (grad.double() * diff).sum(-1)  # [batch, pos]
        for p in range(n_pos):  # patch_sweep's row order: layer, position, batch
            for b in range(n_batch):
                c, d, a = float(base_clean[b]), float(base_donor[b]), float(change[b, p])
                rows.append((l, b, p, "single", c + a, c, d, a))
    columns = ["layer", "batch", "position", "patched", metric_name]
    df = pd.DataFrame(rows, columns=[*columns, "baseline_clean", "baseline_donor", "attribution"])
    df.insert(7, "recovery", recovery(df, metric_name))
    df.attrs.update(metric=metric_name, mode="attribution", site=site)
    return df


def attribution_error(exact: pd.DataFrame, approx: pd.DataFrame, *, worst: int = 5) -> dict:
    """How well an attribution sweep estimates the exact per-position patch sweep of the
    same model, prompts, site and metric: over every cell (layer, batch, position), the
    Pearson and Spearman correlations of the estimated and the exact change of the metric
    (value - baseline_clean), the largest absolute error of the metric, its median, and the
    `worst` cells (a DataFrame, largest error first)."""
    metric = exact.attrs.get("metric")
    if metric is None or metric != approx.attrs.get("metric"):
        raise ValueError(
            f"both tables must come from one metric; got {metric!r} (exact) and "
            f"{approx.attrs.get('metric')!r} (attribution)"
        )
    key = ["layer", "batch", "position"]
    single = exact[exact.patched == "single"]
    if single.empty:
        raise ValueError("the exact table must be a per-position sweep (per_position=True)")
    both = single.merge(approx, on=key, suffixes=("_exact", "_approx"), validate="one_to_one")
    if len(both) != len(single) or len(both) != len(approx):
        raise ValueError("the two tables do not hold the same cells (layers, batch, positions)")
    true = (both[f"{metric}_exact"] - both.baseline_clean_exact).to_numpy(np.float64)
    est = (both[f"{metric}_approx"] - both.baseline_clean_approx).to_numpy(np.float64)
    error = np.abs(both[f"{metric}_exact"] - both[f"{metric}_approx"]).to_numpy(np.float64)
    both["abs_error"] = error
    worst_cells = both.nlargest(worst, "abs_error")[
        [*key, f"{metric}_exact", f"{metric}_approx", "abs_error"]
    ]
    return {
        "pearson": _corr(true, est),
        "spearman": _corr(pd.Series(true).rank().to_numpy(), pd.Series(est).rank().to_numpy()),
        "max_abs_error": float(error.max()),
        "median_abs_error": float(np.median(error)),
        "n_cells": int(len(both)),
        "worst": worst_cells.reset_index(drop=True),
    }


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN where either side is constant (no correlation to speak of)."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
