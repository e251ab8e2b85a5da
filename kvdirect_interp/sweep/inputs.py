"""What every patched pass of one sweep needs, captured once, and the patch functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..hooks import capture_residuals
from .tree import Layered

Cell = tuple[int, "int | None"]  # (layer, patched position; None: every position)


@dataclass
class Inputs:
    """What every patched pass of a sweep needs, captured once."""

    site: str
    tokens: torch.Tensor  # clean [batch, pos]
    clean_logits: torch.Tensor
    donor_logits: torch.Tensor
    donor: dict[int, torch.Tensor]  # layer -> the donor's residual [batch, pos, d_model]
    base: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> start input
    kv: list | None = None  # the clean run's K/V per layer (fast mode, tail passes)
    # exact mode, per patched position: False if a tail pass there gave other bits than
    # the full-shape pass, else the layer kinds on which it gave the same bits
    tails: dict = field(default_factory=dict)

    def start(self, layer: int) -> int:
        return layer + 1 if self.site == "resid_post" else layer


def capture_inputs(model, clean_toks, donor_trace, clean_logits, site, layers) -> Inputs:
    """The clean residual each start layer reads: resid_pre (resid_pre, resid_mid sites) or
    resid_post, captured by `capture_residuals` (the reference path's bits)."""
    base_site = "resid_post" if site == "resid_post" else "resid_pre"
    trace = capture_residuals(model, clean_toks, sites=(base_site,), layers=layers)
    return Inputs(
        site,
        clean_toks,
        clean_logits,
        donor_trace.logits,
        {l: donor_trace.at(site, l) for l in layers},
        {l: trace.at(base_site, l) for l in layers},
    )


def clean_kv(lay: Layered, tokens: torch.Tensor) -> list:
    """Every layer's clean K/V [batch, kv_heads, pos, d_head], kept whole (a cache without
    the config holds full layers, also where the model has sliding-window ones)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    lay.view(0)(input_ids=tokens, past_key_values=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def replacer(source: torch.Tensor, variants: Sequence[int | None], p0: int, n_batch: int):
    """x [variants*batch, pos-p0, d] -> a copy with variant v's patch applied: the source's
    rows at its position (or at every position from p0 for None)."""

    def replace(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        rows = out.view(len(variants), n_batch, *out.shape[1:])
        for v, pos in enumerate(variants):
            if pos is None:
                rows[v] = source[:, p0:].to(out.dtype)
            else:
                rows[v, :, pos - p0] = source[:, pos].to(out.dtype)
        return out

    return replace


def rows_replacer(source: torch.Tensor, p: int, index: int, n_batch: int):
    """x [cells*batch, pos-p, d] -> a copy whose rows of cell `index` hold the source's
    residual at position p (offset 0)."""

    def replace(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[index * n_batch : (index + 1) * n_batch, 0] = source[:, p].to(out.dtype)
        return out

    return replace
