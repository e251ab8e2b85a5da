"""Bytes: the shared shape formulas per storage kind, and the process's measured peak.

Formulas (per token, all layers unless noted), with e = bytes per element:
  K/V (standard cache)      2 * n_layers * n_kv_heads * d_head * e
  resid_pre at every layer  n_layers * d_model * e
  one residual vector       d_model * e     (first_layer: "5 KB/token" in the paper)
  token id                  4
Which of these a policy holds is the policy's own answer (`policy.bytes_per_token(shape)`);
this module only knows the shapes. Sliding-window layers hold at most their window, so on
Gemma 3 and Mistral the cache holds less than the formula for long sequences; tests compare
on global-attention layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

TOKEN_ID_BYTES = 4  # int32 ids suffice for any vocabulary here


@dataclass(frozen=True)
class Shape:
    """The numbers that decide bytes per token."""

    name: str
    n_layers: int
    d_model: int
    n_kv_heads: int
    d_head: int
    bytes_per_element: int

    @classmethod
    def of(cls, model: TransformerBridge, name: str = "") -> Shape:
        cfg = model.cfg
        dtype = next(model.parameters()).dtype
        return cls(
            name or cfg.model_name,
            cfg.n_layers,
            cfg.d_model,
            getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
            cfg.d_head,
            torch.finfo(dtype).bits // 8,
        )


# The paper's headline model, from its public config (bf16).
GEMMA3_4B = Shape(
    "Gemma 3-4B (paper)", n_layers=34, d_model=2560, n_kv_heads=4, d_head=256, bytes_per_element=2
)
# A multi-head (non-GQA) shape, from Llama 2-7B's public config (fp16): every head has its
# own K/V, so the per-layer residual (d_model) is half the K/V it replaces (2 x 32 x 128).
LLAMA2_7B = Shape(
    "Llama 2-7B (multi-head)",
    n_layers=32,
    d_model=4096,
    n_kv_heads=32,
    d_head=128,
    bytes_per_element=2,
)


def kv_bytes_per_token(s: Shape) -> int:
    return 2 * s.n_layers * s.n_kv_heads * s.d_head * s.bytes_per_element


def residual_bytes_per_token(s: Shape, n_layers: int | None = None) -> int:
    return (s.n_layers if n_layers is None else n_layers) * s.d_model * s.bytes_per_element


def bytes_per_token_table(shapes: list[Shape]) -> pd.DataFrame:
    """Bytes per evicted token of each storage kind, and each one's ratio to K/V, as the
    policies holding them state it (`bytes_per_token`, all kinds summed)."""
    from .policies import FullKV, KVDirect  # policies import this module's formulas

    storage = {
        "K/V (standard cache)": FullKV(),
        "every_layer (resid_pre x L)": KVDirect(1, checkpoint="every_layer"),
        "min_bytes (per layer min)": KVDirect(1, checkpoint="min_bytes"),
        "first_layer (one residual)": KVDirect(1, checkpoint="first_layer"),
        "token_ids": KVDirect(1, checkpoint="token_ids"),
    }
    rows = []
    for s in shapes:
        kv = kv_bytes_per_token(s)
        for label, policy in storage.items():
            b = sum(policy.bytes_per_token(s).values())
            rows.append({"model": s.name, "storage": label, "bytes_per_token": b, "vs_kv": b / kv})
    return pd.DataFrame(rows)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_peak_bytes() -> int | None:
    """The process's peak resident set since the last reset (Linux VmHWM), or None."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False
