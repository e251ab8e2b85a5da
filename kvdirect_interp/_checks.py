"""Input checks shared by the public functions: clear errors, never silent truncation."""

from __future__ import annotations

from typing import Sequence

import torch


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape "
                         f"{tuple(b.shape)}; they must be equal (nothing is broadcast)")


def check_layer(model, layer) -> int:
    n = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer {layer!r} is out of range; this model has {n} layers, "
                         f"accepted: 0..{n - 1}")
    return layer


def check_layers(model, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.cfg.n_layers))
    out = [check_layer(model, l) for l in layers]
    if not out:
        raise ValueError("layers is empty; pass None for every layer or a list of layer indices")
    return out


def check_positions(positions, n_pos: int) -> list[int] | None:
    """Normalise positions (Python-style negatives allowed) or raise naming the range."""
    if positions is None:
        return None
    if isinstance(positions, int):
        positions = [positions]
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or not -n_pos <= p < n_pos:
            raise ValueError(f"position {p!r} is out of range for a sequence of {n_pos} "
                             f"tokens; accepted: 0..{n_pos - 1} (or -{n_pos}..-1)")
        out.append(p % n_pos)
    if not out:
        raise ValueError("positions is empty; pass None to patch every position")
    if len(set(out)) != len(out):
        raise ValueError(f"positions {list(positions)} name a position twice")
    return out
