"""The fast mode: cells patched at one position share batched passes (other bits)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .exact import exact_pass
from .inputs import Cell, Inputs, clean_kv
from .tail import grown_pass
from .tree import Layered

FAST_BYTES = 256 * 2**20  # activation bytes a fast pass may hold, about


def groups(model, inp: Inputs, p: int, layers: list[int], chunk_size: int | None, last_only):
    """The layers whose cells at position p share one pass, in start order: `chunk_size`
    of them, or (None) as many as fit in about FAST_BYTES of activations and cached K/V.
    A resid_post cell of the last layer (no layer to run) goes alone."""
    cfg = model.cfg
    n_batch, n_pos = inp.tokens.shape
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    # float32 bytes per recomputed row: residual stream and norms, q/k/v/o, the MLP's
    # hidden units, attention scores and weights, logits unless only the last is kept
    row = 4 * (8 * cfg.d_model + 3 * d_mlp + 2 * cfg.n_heads * n_pos)
    row += 0 if last_only else 4 * cfg.d_vocab
    kv_row = 4 * 2 * cfg.n_layers * n_kv * cfg.d_head  # cached K/V per earlier position
    per_variant = n_batch * ((n_pos - p) * row + p * kv_row)
    size = chunk_size or max(1, FAST_BYTES // per_variant)
    ordered = sorted(layers, key=inp.start)
    last = [l for l in ordered if inp.start(l) == cfg.n_layers]
    ordered = [l for l in ordered if inp.start(l) < cfg.n_layers]
    return [ordered[i : i + size] for i in range(0, len(ordered), size)] + [[l] for l in last]


def fast_logits(
    model, lay: Layered, inp: Inputs, cells: Sequence[Cell], *, last_only: bool, chunk_size
) -> Iterator[tuple[Cell, torch.Tensor]]:
    """(cell, logits) per cell, in no fixed order: [batch, pos, vocab] (positions before
    the patched one are the clean run's logits, which causality makes exact) or [batch, 1,
    vocab] when last_only. The single-position cells at one position run in grown passes
    (`grown_pass`); a whole-residual cell is one layered pass, as in the exact mode."""
    n_batch, n_pos = inp.tokens.shape
    by_pos: dict[int, list[int]] = {}
    for layer, pos in cells:
        if pos is None:
            yield (layer, pos), exact_pass(lay, inp, layer, None, hidden=False)
        else:
            by_pos.setdefault(pos, []).append(layer)
    if by_pos and inp.kv is None:
        inp.kv = clean_kv(lay, inp.tokens)
    for p, layers in by_pos.items():
        for group in groups(model, inp, p, layers, chunk_size, last_only):
            logits = grown_pass(lay, inp, p, group, last_only)
            for i, layer in enumerate(group):
                mine = logits[i * n_batch : (i + 1) * n_batch]
                if not last_only:
                    full = inp.clean_logits.clone()  # causal: before p, the clean logits
                    full[:, p:] = mine
                    mine = full
                yield (layer, p), mine
