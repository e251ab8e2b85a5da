"""Bytes: the shared shape formulas per storage kind, and the process's measured peak.

Formulas (per token, all layers unless noted), with e = bytes per element:
  K/V (standard cache)      2 * n_layers * n_kv_heads * d_head * e
  resid_pre at every layer  n_layers * d_model * e
  one residual vector       d_model * e     (first_layer: "5 KB/token" in the paper)
  token id                  4
Which of these a policy holds is the policy's own answer (`policy.bytes_per_token(shape)`);
this module only knows the shapes. The formulas count every layer. Sliding-window layers
(Gemma 3: five in six; Mistral: all) hold at most their window, so once a sequence is past
it only the global layers grow: `Shape.past_window()` is the shape of those layers, and
`bytes_per_token_table` gives both rates. On the paper's Gemma 3-4B the standard cache
grows by 136 KiB per token up to its 1,024-token window and by 20 KiB per token after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def sliding_windows(model: TransformerBridge) -> list[int | None]:
    """Per layer, the sliding window of the HF model (None for global layers)."""
    return config_sliding_windows(model.original_model.config, model.cfg.n_layers)


def config_sliding_windows(config, n_layers: int) -> list[int | None]:
    """Per layer, the sliding window an HF config gives it (None for global layers)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None:
        return [None] * n_layers
    if types is None:
        return [window] * n_layers
    return [window if t == "sliding_attention" else None for t in types]


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
    # layers attending to every past token (None: all of them) and the window of the others
    n_global_layers: int | None = None
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        g, w = self.n_global_layers, self.sliding_window
        if g is None and w is None:
            return
        if g is None or not 0 <= g <= self.n_layers:
            raise ValueError(
                f"n_global_layers must be in 0..n_layers ({self.n_layers}) when a sliding "
                f"window is given, got {g!r}"
            )
        if g < self.n_layers and (w is None or w < 1):
            raise ValueError(
                f"{self.n_layers - g} sliding layer(s) need a sliding_window >= 1 (tokens), "
                f"got {w!r}"
            )

    @classmethod
    def of(cls, model: TransformerBridge, name: str = "") -> Shape:
        cfg = model.cfg
        dtype = next(model.parameters()).dtype
        windows = [w for w in sliding_windows(model) if w is not None]
        return cls(
            name or cfg.model_name,
            cfg.n_layers,
            cfg.d_model,
            getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
            cfg.d_head,
            torch.finfo(dtype).bits // 8,
            n_global_layers=cfg.n_layers - len(windows) if windows else None,
            sliding_window=max(windows) if windows else None,
        )

    def past_window(self) -> Shape:
        """The layers that still grow once a sequence is past every sliding window (the
        global ones): per-token formulas on this shape are the long-sequence rates."""
        if self.n_global_layers is None:
            return self
        return replace(
            self, n_layers=self.n_global_layers, n_global_layers=None, sliding_window=None
        )


# The paper's headline model, from its public config (bf16). Five local layers with a
# 1,024-token sliding window for each global one (Google's Gemma 3 announcement; HF's
# Gemma3TextConfig makes layer i global where (i + 1) % 6 == 0): 5 of the 34 are global.
GEMMA3_4B = Shape(
    "Gemma 3-4B (paper)",
    n_layers=34,
    d_model=2560,
    n_kv_heads=4,
    d_head=256,
    bytes_per_element=2,
    n_global_layers=5,
    sliding_window=1024,
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


def held_after(shape: Shape, policy, window: int, seen: int, prompt: int | None = None) -> int:
    """Bytes `policy` holds after a run that has seen `seen` tokens: the last `window`
    tokens' K/V, and for every other token the policy's own rate (`bytes_per_token`; "kv"
    there means K/V kept past the window). A checkpoint is held for every token seen, the
    window's included: a token's residual exists only when it is first computed, so it is
    written then. On a model with sliding layers every layer holds the latest
    sliding_window - 1 tokens (what a query there can still see) and only the global
    layers (`Shape.past_window`) the older ones. FullKV: window 0 (its rate is K/V).

    An eviction baseline holds K/V alone, of the tokens it states itself
    (`policy.held_tokens(seen, prompt)`, for a layer without a sliding window: its budget;
    SnapKV, which compresses the prompt once, the budget plus every token after the
    prompt), and nothing for the tokens it dropped. `window` must be its budget; `prompt`,
    the prompt's tokens, matters to SnapKV only (default: every token seen, i.e. right after
    a prompt). A sliding layer holds at most sliding_window - 1 of those tokens: exact for
    every baseline but SnapKV, and for SnapKV where its budget is at least
    sliding_window - 1, where the prompt fits the budget, or once the tokens after the
    prompt fill the sliding window; otherwise SnapKV holds fewer (its heads lose scattered
    prompt tokens as the window passes them) and this is an upper bound.
    Tests compare it with the bytes the runners measure and with the stored studies."""
    held_tokens = getattr(policy, "held_tokens", None)  # the eviction baselines
    if held_tokens is not None:
        if window != policy.budget:
            raise ValueError(
                f"held_after: {policy.name}'s window is its budget ({policy.budget}), got "
                f"window={window!r}"
            )
        window = held_tokens(seen, prompt)
    inside = seen if shape.sliding_window is None else min(seen, shape.sliding_window - 1)
    held = 0
    for part, n, kv_tokens in (
        (shape, inside, min(window, inside)),
        (shape.past_window(), seen - inside, max(0, min(window, seen) - inside)),
    ):
        # a baseline's dropped tokens cost nothing
        per_token = {} if held_tokens is not None else dict(policy.bytes_per_token(part))
        past_kv = per_token.pop("kv", 0)  # K/V kept past the window instead of a checkpoint
        held += kv_tokens * kv_bytes_per_token(part) + (n - kv_tokens) * past_kv
        held += n * sum(per_token.values())
    return held


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
