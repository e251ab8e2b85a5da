"""The exact mode: every cell bitwise one patched forward pass (see the package docstring)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch

from .inputs import Cell, Inputs, clean_kv, replacer
from .tail import grown_pass
from .tree import Layered


def exact_pass(lay: Layered, inp: Inputs, layer: int, pos: int | None, *, hidden: bool):
    """One cell at the full forward pass's shapes: logits [batch, pos, vocab], or the
    final-norm hidden states [batch, pos, d_model] when hidden=True."""
    n_batch = inp.tokens.shape[0]
    replace = replacer(inp.donor[layer], [pos], 0, n_batch)
    x = inp.base[layer]
    mid = inp.site == "resid_mid"
    if not mid:
        x = replace(x)
    view = lay.view(inp.start(layer))
    with lay.mid_patch(layer, replace) if mid else nullcontext():
        if hidden:
            return getattr(view, lay.base_name)(inputs_embeds=x, use_cache=False).last_hidden_state
        return view(inputs_embeds=x, use_cache=False).logits


def exact_logits(
    lay: Layered, inp: Inputs, cells: Sequence[Cell], *, last_only: bool
) -> Iterator[tuple[Cell, torch.Tensor]]:
    """(cell, logits) for every cell, in no fixed order, bitwise those of one patched
    forward pass: [batch, pos, vocab], or [batch, 1, vocab] (the last position) when
    last_only=True. Then the head runs on the last rows of `pos` cells at once, in one
    [batch, pos] GEMM, and a cell patched at p > 0 may be a tail pass (positions p.. over
    the clean K/V before p: fewer GEMM rows), where `_tail_ok` found it bitwise."""
    if not last_only:
        for layer, pos in cells:
            yield (layer, pos), exact_pass(lay, inp, layer, pos, hidden=False)
        return
    n_batch, n_pos = inp.tokens.shape
    # per position, the topmost start first: the cheapest pass checks a tail's bits
    order = sorted(cells, key=lambda c: (c[1] is None, c[1] or 0, -inp.start(c[0])))
    for first in range(0, len(order), n_pos):
        group = order[first : first + n_pos]
        rows = None
        for j, (layer, pos) in enumerate(group):
            h = _last_hidden(lay, inp, layer, pos)
            if rows is None:
                rows = torch.zeros(n_batch, n_pos, h.shape[-1], dtype=h.dtype, device=h.device)
            rows[:, j] = h  # unused rows stay zero: the GEMM keeps its M
        logits = lay.head(inputs_embeds=rows, use_cache=False).logits
        for j, cell in enumerate(group):
            yield cell, logits[:, j : j + 1]


def _signature(layer: torch.nn.Module) -> tuple:
    return type(layer).__name__, getattr(layer, "attention_type", None)


def _last_hidden(lay: Layered, inp: Inputs, layer: int, pos: int | None) -> torch.Tensor:
    """The final-norm hidden state [batch, d_model] at the last position of one cell,
    bitwise that of the full-shape pass: from a tail pass where the sweep has seen the
    tail pass at this position give the full pass's bits, on layers of the same kinds."""
    if pos is None or pos == 0:
        return exact_pass(lay, inp, layer, pos, hidden=True)[:, -1]
    needed = {_signature(lay.layers[j]) for j in range(inp.start(layer), lay.n_layers)}
    seen = inp.tails.get(pos)
    if seen is not False and seen is not None and needed <= seen:
        return grown_pass(lay, inp, pos, [layer], True, hidden=True)[:, -1]
    full = exact_pass(lay, inp, layer, pos, hidden=True)
    if seen is not False:  # check the tail pass here, once per position and layer kind
        if inp.kv is None:
            inp.kv = clean_kv(lay, inp.tokens)
        tail = grown_pass(lay, inp, pos, [layer], True, hidden=True)
        inp.tails[pos] = (seen or set()) | needed if torch.equal(tail, full[:, pos:]) else False
    return full[:, -1]
