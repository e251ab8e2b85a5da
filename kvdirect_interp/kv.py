"""Keys and values rebuilt from the residual stream with each layer's own modules.

For layer l: x = ln1(resid_pre[l]); k = W_k x (+b); v = W_v x (+b); then the family's k-norm
(Gemma 3) and rotary embedding give the key that attention scores use. The steps repeat the
TransformerBridge attention's own operations in the same order and layout, so a rebuild with
the forward pass's shapes can be compared bitwise with the hooks' values.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ._checks import check_layer
from .hooks import hook_name, run_and_capture
from .metrics import ulp_distance
from .tokens import TokensLike, to_tokens

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class RebuiltKV:
    """What a layer's attention hooks see, each [batch, pos, n_kv_heads, d_head].

    k: hook_k (the projection, before any k-norm); v: hook_v;
    rot_k: the key attention scores use (after k-norm and rotary; equal to k without rotary).
    """

    k: torch.Tensor
    v: torch.Tensor
    rot_k: torch.Tensor


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@functools.cache
def _takes_layer_type(rotary_type: type) -> bool:
    return "layer_type" in inspect.signature(rotary_type.forward).parameters


# per rotary module, the last (layer type, dtype) -> (positions, cos, sin): every layer of a
# KV-Direct step rebuilds the same positions, so they are computed once per step, not per layer
_COS_SIN: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


def _cos_sin(model, layer: int, like: torch.Tensor, positions: torch.Tensor):
    """cos, sin [1, pos, rotary_dim] for these positions from the model's own rotary module."""
    rotary = model.rotary_emb.original_component
    # Gemma 3: sliding and global layers use different bases
    layer_type = (
        model.original_model.config.layer_types[layer] if _takes_layer_type(type(rotary)) else None
    )
    seen = _COS_SIN.setdefault(rotary, {})
    key = (layer_type, like.dtype, like.device)
    if key in seen and torch.equal(seen[key][0], positions):
        return seen[key][1:]
    position_ids = positions[None].to(like.device)
    args = (like, position_ids) if layer_type is None else (like, position_ids, layer_type)
    cos, sin = rotary(*args)
    seen[key] = (positions.clone(), cos, sin)
    return cos, sin


def _norm(norm, x: torch.Tensor) -> torch.Tensor:
    """What the bridge's norm component returns for x. On its native path with nothing
    hooked it returns its HF module's output (TransformerLens 4.3's
    NormalizationBridge._hf_autograd_forward_with_hooks), so that module is called directly,
    skipping the hook-point statistics it computes first (a third of a small rebuild)."""
    from torch.nn.modules import module as nn_module

    native = getattr(norm, "use_native_layernorm_autograd", False) or getattr(
        getattr(norm, "config", None), "layer_norm_folding", False
    )
    parts = [
        norm,
        *(getattr(norm, h, None) for h in ("hook_in", "hook_out", "hook_scale", "hook_normalized")),
    ]
    hooked = (
        nn_module._global_forward_hooks
        or nn_module._global_forward_pre_hooks
        or any(p is None or p._forward_hooks or p._forward_pre_hooks for p in parts)
    )
    original = getattr(norm, "original_component", None)
    if not native or hooked or original is None or isinstance(original, torch.nn.Identity):
        return norm(x)
    out = original(x)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _per_head_norm(attn, k: torch.Tensor) -> torch.Tensor:
    """The post-reshape k-norm of k [batch, pos, heads, d_head], in the layout the bridge
    gives the norm (its hooks see that layout)."""
    if attn._qk_norm_per_head:
        return _norm(attn.k_norm, k)
    return _norm(attn.k_norm, k.transpose(1, 2)).transpose(1, 2)


def has_rotary(model: TransformerBridge) -> bool:
    return getattr(model.cfg, "positional_embedding_type", None) == "rotary"


def family(model: TransformerBridge) -> str:
    """The HF architecture name the bridge wraps (e.g. 'LlamaForCausalLM')."""
    hf = getattr(model, "original_model", None)
    return getattr(model.cfg, "architecture", None) or type(hf).__name__


def _unsupported(model, why: str) -> NotImplementedError:
    return NotImplementedError(f"rebuild_kv does not support {family(model)}: {why}")


# cfg flags of TransformerLens 4.3 attention variants whose key path rebuild_kv does not repeat
_UNSUPPORTED_FLAGS = {
    "rotary_interleaved_cos_sin": "its rotary embedding interleaves cos/sin (GPT-J style)",
    "rotary_adjacent_pairs": "its rotary embedding rotates adjacent pairs, not halves",
    "use_split_qkv_input": "its attention takes separate per-head q/k/v inputs",
    "use_attn_in": "its attention takes per-head inputs (use_attn_in)",
    "gated_q_proj": "its q projection is gated (linear-attention hybrid)",
}


# families whose key path differs in a way no bridge flag says, measured against the hooks
# (tests/unit/test_families.py): the rebuilt K or rotated K would differ from the forward's
_UNSUPPORTED_FAMILIES = {
    "OpenAIGPTLMHeadModel": "its blocks are post-norm: ln1 follows attention, not precedes it",
    "BertLMHeadModel": "its blocks are post-norm: ln1 follows attention, not precedes it",
    "Exaone4ForCausalLM": "its global layers have no rotary embedding (NoPE)",
    "GptOssForCausalLM": "its rotary embedding computes (x1 cos - x2 sin, x2 cos + x1 sin), "
    "other bits than rotate_half",
    "HunYuanDenseV1ForCausalLM": "it normalises keys after the rotary embedding",
}


def _has(component, name: str) -> bool:
    return name in getattr(component, "submodules", {}) or name in component._modules


def check_supported(model) -> None:
    """Raise NotImplementedError, naming the family and why, where `rebuild_kv` cannot
    rebuild this model's K/V exactly (KV-Direct's rebuild modes ask before they start)."""
    _check_supported(model, model.blocks[0])


def _check_supported(model, block) -> None:
    """Raise NotImplementedError, naming the family and the reason, for a layer whose keys
    this module cannot rebuild exactly as the bridge computes them."""
    why = _UNSUPPORTED_FAMILIES.get(type(getattr(model, "original_model", None)).__name__)
    if why is not None:
        raise _unsupported(model, why)
    # KV-Direct rebuilds every layer's K/V: a hybrid with recurrent layers has none to rebuild
    plain = [i for i, b in enumerate(model.blocks) if not _has(b, "attn")]
    if plain:
        raise _unsupported(
            model, f"layers {plain} have no attention (recurrent or state-space blocks)"
        )
    attn = block.attn
    for flag, why in _UNSUPPORTED_FLAGS.items():
        if getattr(model.cfg, flag, False):
            raise _unsupported(model, why)
    subs = attn.submodules
    if "k" not in subs or "v" not in subs:
        raise _unsupported(model, "its attention has no separate k and v projections")
    if not has_rotary(model) and getattr(model.cfg, "positional_embedding_type", "") not in (
        "standard",
        "alibi",
    ):
        raise _unsupported(model, "its positional embedding is not rotary, learned or ALiBi")
    if has_rotary(model) and "rotary_emb" not in model._modules:
        raise _unsupported(model, "its rotary embedding is per layer, not one model-level module")
    hf_attn = attn.original_component
    if getattr(hf_attn, "key_multiplier", None) is not None:
        raise _unsupported(model, "its keys are scaled by a learned multiplier")
    if getattr(getattr(hf_attn, "config", None), "clip_qkv", None) is not None:
        raise _unsupported(model, "its q/k/v are clipped (clip_qkv)")
    if "k_norm" in subs and getattr(attn, "_qk_norm_phase", None) not in (
        "post_reshape",
        "pre_reshape",
    ):
        raise _unsupported(model, "its attention applies a k-norm in an order not modelled here")


def _project(proj, x: torch.Tensor, row_by_row: bool) -> torch.Tensor:
    """proj(x) [1, pos, out]: one GEMM, or (row_by_row) one 1-row GEMM per position."""
    if not row_by_row or x.shape[1] == 1:
        return proj(x)
    return torch.cat([proj(x[:, i : i + 1]) for i in range(x.shape[1])], dim=1)


@torch.no_grad()
def rebuild_kv(
    model: TransformerBridge,
    residual: torch.Tensor,
    layer: int,
    *,
    positions: torch.Tensor | Sequence[int] | None = None,
    row_by_row: bool = False,
) -> RebuiltKV:
    """Rebuild layer `layer`'s keys and values from its resid_pre.

    residual: [batch, pos, d_model], the layer's resid_pre; positions: the token positions
    (for the rotary embedding), [pos], default 0..pos-1.
    row_by_row: project each row with its own 1-row GEMM, the shape a one-token decode pass
    used (batch must be 1), instead of one GEMM over all rows; the norms and the rotary,
    row-wise operations, still run over all rows at once (the same bits as one row at a
    time: KV-Direct's exact-shape tests compare every step's logits with FullKV's).
    """
    check_layer(model, layer)
    if residual.dim() != 3 or residual.shape[-1] != model.cfg.d_model:
        raise ValueError(
            f"residual must be [batch, pos, d_model={model.cfg.d_model}], got "
            f"shape {tuple(residual.shape)}"
        )
    if row_by_row and residual.shape[0] != 1:
        raise ValueError(f"row_by_row needs batch 1 (one row per GEMM), got {residual.shape[0]}")
    n_pos = residual.shape[1]
    if positions is None:
        positions = torch.arange(n_pos)
    positions = torch.as_tensor(positions, dtype=torch.long)
    if positions.shape != (n_pos,):
        raise ValueError(
            f"positions must have one entry per residual row ({n_pos}), got shape "
            f"{tuple(positions.shape)}"
        )
    block = model.blocks[layer]
    _check_supported(model, block)
    attn = block.attn
    head_dim = model.cfg.d_head
    # What the bridge's norm modules compute, not always HF's: for LayerNorm the bridge
    # computes the norm from scratch (other bits than torch.layer_norm), and the forward
    # pass used the bridge's.
    # no ln1: a post-norm block (OLMo 2, EXAONE 4) whose attention reads resid_pre itself
    x = _norm(block.ln1, residual) if _has(block, "ln1") else residual
    k = _project(attn.k.original_component, x, row_by_row)
    v = _project(attn.v.original_component, x, row_by_row)
    heads = (*x.shape[:-1], -1, head_dim)
    # [batch, pos, heads, d_head]: the bridge transposes to [batch, heads, pos, d_head] here,
    # but element-wise steps give the same bits in either layout, and this one is contiguous
    rot_k = k.view(heads)
    k_norm = attn.k_norm if "k_norm" in attn.submodules else None
    if k_norm is not None and attn._qk_norm_phase == "pre_reshape":
        rot_k = _norm(k_norm, k).view(heads)  # OLMo 2: one norm over all heads' keys
    elif k_norm is not None:
        rot_k = _per_head_norm(attn, rot_k)
    if has_rotary(model):
        cos, sin = _cos_sin(model, layer, residual, positions)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [1, pos, 1, rotary_dim]
        rot_dim = cos.shape[-1]
        k_rot, k_pass = rot_k[..., :rot_dim], rot_k[..., rot_dim:]
        # (k * cos) + (rotate_half(k) * sin) as the bridge computes it; in place where the
        # operands commute exactly (IEEE products and sums do), to save two temporaries
        rotated = k_rot * cos
        rotated += _rotate_half(k_rot).mul_(sin)
        rot_k = torch.cat([rotated, k_pass], dim=-1) if k_pass.shape[-1] else rotated
    return RebuiltKV(k=k.view(heads), v=v.view(heads), rot_k=rot_k)


REBUILD_SHAPES = ("same", "one_token", "one_token_padded8")
_TENSORS = {"k": "attn.hook_k", "v": "attn.hook_v", "rot_k": "attn.hook_rot_k"}


def _rebuild_with_shape(model, resid: torch.Tensor, layer: int, shape: str) -> RebuiltKV:
    """Rebuild all positions, as one GEMM ('same') or one token at a time."""
    if shape == "same":
        return rebuild_kv(model, resid, layer)
    parts = []
    for i in range(resid.shape[1]):
        row = resid[:, i : i + 1]
        if shape == "one_token_padded8":
            # a single row takes another GEMM kernel; 8 rows take the forward pass's path
            row = torch.cat([row, row.new_zeros(row.shape[0], 7, row.shape[2])], dim=1)
            kv = rebuild_kv(model, row, layer, positions=torch.full((8,), i))
            parts.append(RebuiltKV(kv.k[:, :1], kv.v[:, :1], kv.rot_k[:, :1]))
        else:
            parts.append(rebuild_kv(model, row, layer, positions=[i]))
    return RebuiltKV(
        *(torch.cat([getattr(p, f) for p in parts], dim=1) for f in ("k", "v", "rot_k"))
    )


@torch.no_grad()
def reconstruction_report(
    model: TransformerBridge, tokens: TokensLike, *, shapes: Sequence[str] = ("same", "one_token")
) -> pd.DataFrame:
    """Per layer, tensor (k, v, rot_k) and rebuild shape: is the rebuild bitwise equal to the
    forward pass's hook value, and if not, by how much does it differ?

    Columns: layer, tensor, shape, reference (the hook compared against), bitwise_equal,
    max_abs_err, max_ulp. A tensor whose hook the bridge does not fire (rot_k on GPT-NeoX in
    TransformerLens 4.3) gets reference None and missing values: not compared, not assumed.
    """
    for s in shapes:
        if s not in REBUILD_SHAPES:
            raise ValueError(f"unknown rebuild shape {s!r}; accepted: {list(REBUILD_SHAPES)}")
    toks = to_tokens(model, tokens)
    n_layers = model.cfg.n_layers
    names = [hook_name(l, "resid_pre") for l in range(n_layers)]
    refs = {}
    for l in range(n_layers):
        for tensor, hook in _TENSORS.items():
            name = f"blocks.{l}.{hook}"
            if tensor == "rot_k" and not has_rotary(model):
                name = f"blocks.{l}.attn.hook_k"  # no rotary: the scored key is hook_k
            if name in model.hook_dict:
                refs[(l, tensor)] = name
    # hook_rot_k exists on every rotary bridge but does not fire on all of them: keep
    # what fires, and report the rest as not compared
    _, fired = run_and_capture(model, toks, names + sorted(set(refs.values())), require_all=False)
    missing = [name for name in names if name not in fired]
    if missing:
        raise RuntimeError(f"hooks did not fire during the forward pass: {missing[:4]}")
    rows = []
    for l in range(n_layers):
        resid = fired[hook_name(l, "resid_pre")]
        for shape in shapes:
            kv = _rebuild_with_shape(model, resid, l, shape)
            for tensor in _TENSORS:
                ref_name = refs.get((l, tensor))
                ref = fired.get(ref_name) if ref_name else None
                if ref is None:
                    rows.append((l, tensor, shape, None, pd.NA, float("nan"), pd.NA))
                    continue
                got = getattr(kv, tensor)
                if got.shape != ref.shape:
                    raise RuntimeError(
                        f"rebuilt {tensor} has shape {tuple(got.shape)} but "
                        f"{ref_name} has {tuple(ref.shape)}"
                    )
                rows.append(
                    (
                        l,
                        tensor,
                        shape,
                        ref_name,
                        bool(torch.equal(got, ref)),
                        float((got.double() - ref.double()).abs().max()),
                        int(ulp_distance(got, ref).max()),
                    )
                )
    df = pd.DataFrame(
        rows,
        columns=[
            "layer",
            "tensor",
            "shape",
            "reference",
            "bitwise_equal",
            "max_abs_err",
            "max_ulp",
        ],
    )
    return df.astype({"bitwise_equal": "boolean", "max_ulp": "Int64"})
