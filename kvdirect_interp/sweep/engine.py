"""A sweep's cells by the fastest path `exact` allows; patch_sweep's rows and what ran."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..hooks import patch_residual
from .exact import exact_logits
from .fast import fast_logits
from .inputs import Cell, capture_inputs
from .probe import layered


def check_cells(cells: Sequence[Cell], check) -> list[Cell]:
    """The cells a fast sweep recomputes exactly: `check` of them evenly spread (the
    first, whose recomputation is the longest, included), or every cell for "all"."""
    if check == "all":
        return list(cells)
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise ValueError(f"check must be a non-negative integer or 'all', got {check!r}")
    k = min(check, len(cells))
    if k == 0:
        return []
    if k == 1:
        return [cells[0]]
    return [cells[i] for i in sorted({round(i * (len(cells) - 1) / (k - 1)) for i in range(k)})]


class Sweep:
    """The patched logits of a sweep's cells, by the fastest path that `exact` allows.

    path: "layered" (exact, bitwise), "batched" (fast) or "full" (one full patched forward
    pass per cell through `patch_residual`, where no layered pass is available; `reason`
    says why)."""

    def __init__(
        self,
        model,
        clean_toks: torch.Tensor,
        donor_trace,
        clean_logits: torch.Tensor,
        *,
        site: str,
        layers: Sequence[int],
        exact: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        self.model, self.site, self.chunk_size = model, site, chunk_size
        self.tokens, self.donor_trace = clean_toks, donor_trace
        self.mode = "exact" if exact else "fast"
        self.lay, why = layered(model, site)
        if self.lay is None:
            self.path, self.reason, self.inp = "full", why, None
            return
        self.inp = capture_inputs(model, clean_toks, donor_trace, clean_logits, site, layers)
        self.path = "layered" if exact else "batched"
        self.reason = (
            "layers below the patched one start from the clean run's residuals; full shapes"
            if exact
            else "batched variants recompute positions from the patched one on"
        )

    def logits(self, cells: Sequence[Cell], *, last_only: bool, exact: bool | None = None):
        """(cell, logits) per cell: [batch, pos, vocab], or [batch, 1, vocab] (the last
        position) when last_only. exact=None: this sweep's mode."""
        exact = self.mode == "exact" if exact is None else exact
        if self.lay is None:
            return self._full(cells, last_only)
        if exact:
            return exact_logits(self.lay, self.inp, cells, last_only=last_only)
        return fast_logits(
            self.model, self.lay, self.inp, cells, last_only=last_only, chunk_size=self.chunk_size
        )

    def _full(self, cells, last_only):
        for layer, pos in cells:
            logits = patch_residual(
                self.model,
                self.tokens,
                layer=layer,
                source=self.donor_trace,
                positions=pos,
                site=self.site,
            )
            yield (layer, pos), logits[:, -1:] if last_only else logits


def metric_values(metric_fn: Callable, logits: torch.Tensor, refs) -> torch.Tensor:
    """metric_fn(logits, clean, donor) checked: float values [batch, pos] of the logits
    given (a custom metric of another shape is refused, never broadcast)."""
    values = metric_fn(logits, *refs)
    want = tuple(logits.shape[:2])
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != want:
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"the metric must return a tensor [batch, pos] = {list(want)} for logits "
            f"{list(logits.shape)}, got {got}"
        )
    return values


def _baselines(clean: torch.Tensor, donor: torch.Tensor, b: int, p: int) -> tuple:
    """(clean value, donor value) at row b, position p."""
    return float(clean[b, p]), float(donor[b, p])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |a - b| in float64, 0 where the two are equal (also inf == inf)."""
    a, b = a.double(), b.double()
    diff = torch.where(a == b, torch.zeros_like(a), (a - b).abs())
    return float(diff.max()) if diff.numel() else 0.0


@torch.no_grad()
def run(
    model,
    clean_toks: torch.Tensor,
    donor_trace,
    clean_logits: torch.Tensor,
    *,
    site: str,
    layers: Sequence[int],
    per_position: bool,
    metric_fn: Callable,
    positionwise: bool,
    exact: bool = True,
    chunk_size: int | None = None,
    check=8,
    progress: bool = True,
) -> tuple[list[tuple], dict]:
    """The rows (layer, batch, position, patched, value) of `patch_sweep` and what ran
    (its DataFrame's attrs). positionwise: the metric's value at a position depends on that
    position's logits alone (then per_position sweeps compute the last position only)."""
    n_batch, n_pos = clean_toks.shape
    cells: list[Cell] = [(l, p) for l in layers for p in (range(n_pos) if per_position else [None])]
    checked = check_cells(cells, check) if not exact else []
    sweep = Sweep(
        model,
        clean_toks,
        donor_trace,
        clean_logits,
        site=site,
        layers=layers,
        exact=exact,
        chunk_size=chunk_size,
    )
    if sweep.path != "batched":
        checked = []  # exact already: nothing to compare
    last_only = per_position and positionwise
    refs = (clean_logits, donor_trace.logits)
    if last_only:
        refs = (clean_logits[:, -1:], donor_trace.logits[:, -1:])
    values_of, kept = {}, {}
    want = set(checked)
    bar = tqdm(total=len(cells), desc=f"patching {site}", disable=not progress)
    try:  # the fast mode yields cells in its own order: rows are made in cell order below
        for cell, logits in sweep.logits(cells, last_only=last_only):
            values = metric_values(metric_fn, logits, refs)
            values_of[cell] = values = values if cell[1] is None else values[:, -1:]
            if cell in want:
                kept[cell] = (logits, values)
            bar.update(1)
    finally:
        bar.close()
    # the two baselines: the metric of the unpatched run and of the donor's own run
    base_clean, base_donor = (metric_values(metric_fn, r, refs) for r in refs)
    rows = []
    for layer, pos in cells:
        values = values_of[layer, pos]
        for b in range(n_batch):
            if pos is None:
                rows += [
                    (
                        layer,
                        b,
                        p,
                        "all",
                        float(values[b, p]),
                        *_baselines(base_clean, base_donor, b, p),
                    )
                    for p in range(n_pos)
                ]
            else:
                at = (float(values[b, 0]), *_baselines(base_clean, base_donor, b, -1))
                rows.append((layer, b, pos, "single", *at))
    info = {"mode": sweep.mode, "path": sweep.path, "reason": sweep.reason}
    info.update(checked_cells=len(checked), max_abs_logit_diff=None, max_abs_metric_diff=None)
    if sweep.inp is not None and exact:  # positions whose cells ran as bitwise tail passes
        info["tail_positions"] = sorted(p for p, seen in sweep.inp.tails.items() if seen)
    if checked:
        logit_diff = metric_diff = 0.0
        for cell, logits in sweep.logits(checked, last_only=last_only, exact=True):
            fast, fast_values = kept[cell]
            values = metric_values(metric_fn, logits, refs)
            values = values if cell[1] is None else values[:, -1:]
            logit_diff = max(logit_diff, _max_diff(fast, logits))
            metric_diff = max(metric_diff, _max_diff(fast_values, values))
        info.update(max_abs_logit_diff=logit_diff, max_abs_metric_diff=metric_diff)
    return rows, info
