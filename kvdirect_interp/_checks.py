"""Input checks shared by the public functions: clear errors, never silent truncation."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape "
            f"{tuple(b.shape)}; they must be equal (nothing is broadcast)"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value) -> str:
    return type(value).__name__


def check_layer(model, layer) -> int:
    n = model.cfg.n_layers
    if not _is_int(layer):
        raise ValueError(
            f"layer {layer!r} must be an integer (got {_type_name(layer)}); "
            f"this model has {n} layers, accepted: 0..{n - 1}"
        )
    if not 0 <= layer < n:
        raise ValueError(
            f"layer {layer!r} is out of range; this model has {n} layers, accepted: 0..{n - 1}"
        )
    return layer


def check_layers(model, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.cfg.n_layers))
    out = [check_layer(model, l) for l in layers]
    if not out:
        raise ValueError("layers is empty; pass None for every layer or a list of layer indices")
    return out


def check_positions(positions, n_pos: int) -> list[int] | None:
    """Positions as a list of indices in 0..n_pos-1, or None (every position).

    `positions` is None, one integer or a sequence of integers. Negative positions are
    Python-style indices counted from the end (-1 is the last token, -n_pos the first) and
    are returned as their non-negative equivalents. Raises ValueError for a non-integer, an
    out-of-range or a repeated position, or an empty sequence, naming the accepted range."""
    if positions is None:
        return None
    if (
        isinstance(positions, (int, float, str, bytes))
        or not hasattr(positions, "__iter__")
        or (isinstance(positions, torch.Tensor) and positions.dim() == 0)
    ):
        positions = [positions]  # one position (a non-integer one is reported below)
    accepted = f"accepted: 0..{n_pos - 1} (or -{n_pos}..-1)"
    out = []
    for p in positions:
        if not _is_int(p):
            raise ValueError(
                f"position {p!r} must be an integer (got {_type_name(p)}); "
                f"the sequence has {n_pos} tokens, {accepted}"
            )
        if not -n_pos <= p < n_pos:
            raise ValueError(
                f"position {p!r} is out of range for a sequence of {n_pos} tokens; {accepted}"
            )
        out.append(p % n_pos)
    if not out:
        raise ValueError("positions is empty; pass None to patch every position")
    if len(set(out)) != len(out):
        raise ValueError(f"positions {list(positions)} name a position twice")
    return out


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ValueError naming `tensor` and its count of NaN and infinite entries, if any."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return  # integer and bool tensors hold no NaN or inf
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int((~finite).sum()) - n_nan
    raise ValueError(
        f"{name} has {n_nan} NaN and {n_inf} infinite entries (of "
        f"{tensor.numel()}, shape {tuple(tensor.shape)}); every entry must be "
        "finite"
    )
