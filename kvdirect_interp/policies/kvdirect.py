"""KV-Direct: a window of recent K/V, checkpoints for older tokens, K/V recomputed.

The paper's method (arXiv 2603.19664): the `window` most recent tokens keep K and V; older
tokens keep a checkpoint, and their K/V are recomputed whenever attention needs them. What
the checkpoint is decides both the bytes and the compute, and which mechanism runs:

- "every_layer": resid_pre at every layer (L x d_model per token). A layer's K/V are one
  norm + two projections (+ k-norm, rotary) away: rebuilt (kvdirect_rebuild.py).
- "min_bytes": per layer, whichever of resid_pre or K/V is smaller (`keeps_kv`); K/V are
  kept where they are smaller (grouped-query layers), residuals rebuilt elsewhere.
- "first_layer": one residual vector per token (the block-0 input, d_model per token, the
  paper's "5 KB/token"). Layer l needs resid_pre[l], so every layer below must be run
  again for the evicted tokens: a replay at every step (kvdirect_replay.py).
- "token_ids": the same information as "first_layer" in 4 bytes per token (the embedding is
  deterministic): the same replay.

`replay` says how the two replay modes run it: "streaming" (the default) one layer at a
time inside the step's own forward pass, so only one layer's replayed K/V (and the evicted
tokens' hidden state) are alive at once (kvdirect_stream.py); "one_shot" a re-prefill of
every layer before the pass, whose K/V of every layer stay alive through it. Both run the
same layers over the same tokens (the same FLOPs); the rebuild modes ignore the setting.

exact_shapes=True recomputes each token with the GEMM shape of the forward pass that first
computed it, so recomputed K/V can be bitwise equal to the cached ones; exact_shapes=False
recomputes all evicted tokens in one GEMM (faster, other bits). Whether they are bitwise
equal is measured by the tests and notebooks, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from ..cost import Arch, forward_flops, rebuild_flops
from ..kv import check_supported
from ..memory import TOKEN_ID_BYTES, Shape, kv_bytes_per_token, residual_bytes_per_token
from .base import CachePolicy, check_fits
from .kvdirect_rebuild import RebuildRunner
from .kvdirect_replay import ReplayRunner

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from .kvdirect_window import KVDirectRunner

Checkpoint = Literal["every_layer", "first_layer", "token_ids", "min_bytes"]
MODES: tuple[str, ...] = get_args(Checkpoint)
Replay = Literal["streaming", "one_shot"]
REPLAYS: tuple[str, ...] = get_args(Replay)
REBUILD_MODES = ("every_layer", "min_bytes")  # residual checkpoints, K/V rebuilt per layer
REPLAY_MODES = ("first_layer", "token_ids")  # block-0 input only: a re-prefill


@dataclass(frozen=True)
class KVDirect(CachePolicy):
    """The `window` most recent tokens keep K/V; older tokens keep a `checkpoint` (see the
    module docstring) and their K/V are recomputed whenever attention needs them.

    replay: how "first_layer" / "token_ids" re-run the evicted tokens: "streaming" (one layer
    at a time in the step's pass) or "one_shot" (every layer before it); ignored by
    "every_layer" and "min_bytes", which rebuild each layer from its own residual."""

    window: int
    checkpoint: Checkpoint = "every_layer"
    exact_shapes: bool = True
    replay: Replay = "streaming"

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(
                f"window must be an integer >= 1 (tokens keeping K/V), got {self.window!r}"
            )
        if self.checkpoint not in MODES:
            raise ValueError(
                f"unknown checkpoint mode {self.checkpoint!r}; accepted: {list(MODES)}"
            )
        if self.replay not in REPLAYS:
            raise ValueError(f"unknown replay {self.replay!r}; accepted: {list(REPLAYS)}")

    @property
    def name(self) -> str:
        return f"KVDirect[{self.checkpoint}]"

    @property
    def replays(self) -> bool:
        """Whether evicted tokens are re-run through every layer (else rebuilt per layer)."""
        return self.checkpoint in REPLAY_MODES

    def keeps_kv(self, n_kv_heads: int, d_head: int, d_model: int) -> bool:
        """Whether a layer of this shape keeps K/V for evicted tokens instead of a residual:
        under min_bytes, where K+V (2 * n_kv_heads * d_head per token) are no larger than
        resid_pre (d_model); ties keep K/V, which costs no compute."""
        return self.checkpoint == "min_bytes" and 2 * n_kv_heads * d_head <= d_model

    def runner(self, model: TransformerBridge) -> KVDirectRunner:
        check_fits(model, "window", self.window)
        if not self.replays:  # a family rebuild_kv cannot follow: say so before any work
            check_supported(model)
        return (ReplayRunner if self.replays else RebuildRunner)(model, self)

    def bytes_per_token(self, shape: Shape) -> dict[str, int]:
        if self.keeps_kv(shape.n_kv_heads, shape.d_head, shape.d_model):
            return {"kv": kv_bytes_per_token(shape)}
        return {
            "every_layer": {"residual": residual_bytes_per_token(shape)},
            "min_bytes": {"residual": residual_bytes_per_token(shape)},
            "first_layer": {"residual": residual_bytes_per_token(shape, 1)},
            "token_ids": {"token_ids": TOKEN_ID_BYTES},
        }[self.checkpoint]

    def step_flops(self, arch: Arch, context: int, prompt: int | None = None) -> float:
        evicted = max(0, context - self.window)
        step = forward_flops(arch, 1, context + 1)  # attention still reads every key
        if self.replays:
            # a re-prefill, streamed or one-shot: the same layers over the same tokens
            return step + forward_flops(arch, evicted, (evicted + 1) / 2, logits=0)
        if self.keeps_kv(arch.n_kv_heads, arch.d_head, arch.d_model):
            return step  # K/V are kept on every layer: nothing to rebuild
        return step + rebuild_flops(arch, evicted)
