"""What both KV-Direct mechanisms share: the window of held K/V, the positions of the tokens
that left it (checkpointed), and which forward pass first computed each token.

A layer holds the K/V of the `window` most recent tokens; after every forward pass the
older ones move to `ck_pos`, and at the next pass `evicted_kv()` (the mechanism's: rebuilt
from residuals, or replayed) supplies their K/V in front of the held ones.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

import torch

from .base import CacheRunner, PolicyLayer, tensor_bytes

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from .kvdirect import KVDirect


class Segments:
    """Which forward pass computed each token: (start position, length) per pass."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []
        self._starts: list[int] = []  # ascending: passes come in order

    def add(self, start: int, length: int) -> None:
        if self._starts and start < self._starts[-1] + self.spans[-1][1]:
            raise ValueError(f"pass at {start} overlaps the last one {self.spans[-1]}")
        self.spans.append((start, length))
        self._starts.append(start)

    def of(self, position: int) -> tuple[int, int]:
        # a binary search: a long chat has ~1,000 one-token passes, asked per evicted token
        i = bisect.bisect_right(self._starts, position) - 1
        if i >= 0 and position < self._starts[i] + self.spans[i][1]:
            return self.spans[i]
        raise KeyError(position)


class WindowLayer(PolicyLayer):
    """Held window K/V [1, kv_heads, n_held, d_head], plus the positions of evicted tokens,
    whose K/V `evicted_kv` provides (None when there are none)."""

    def __init__(self, layer: int, sliding_window: int | None, runner: KVDirectRunner) -> None:
        super().__init__(layer, sliding_window)
        self.runner = runner
        self.ck_pos = torch.zeros(0, dtype=torch.long)  # [n_evicted], ascending
        self.rebuilt_bytes = 0  # K/V handed to attention for evicted tokens, last update

    # ---- what each mechanism fills in ----
    def evicted_kv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """K (rotated) and V of the evicted tokens, [1, kv_heads, n_evicted, d_head]."""
        raise NotImplementedError

    @property
    def evicts(self) -> bool:
        """False where the layer keeps every token's K/V (min_bytes, K/V the smaller)."""
        return True

    def checkpoint(self, n_out: int) -> None:
        """The first n_out held tokens leave the window: keep what rebuilds them."""

    def forget_checkpoints(self, visible: torch.Tensor) -> None:
        """Keep only the checkpoints of evicted tokens where `visible` (bool [n_evicted])."""

    # ---- shared ----
    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self.ck_pos = self.ck_pos.to(key_states.device)

    def past_visible(self) -> int:
        return super().past_visible() + len(self.ck_pos)

    def update(self, key_states, value_states, *args, **kwargs):
        self.append(key_states, value_states)
        rebuilt = self.evicted_kv()
        if rebuilt is None:
            self.rebuilt_bytes = 0
            return self.keys, self.values
        k_old, v_old = rebuilt
        self.rebuilt_bytes = tensor_bytes(k_old, v_old)
        return torch.cat([k_old, self.keys], dim=-2), torch.cat([v_old, self.values], dim=-2)

    def after_forward(self) -> None:
        if self.sliding_window is not None:  # never attended again: no checkpoint needed
            visible = self.ck_pos > self.seen - self.sliding_window
            self.ck_pos = self.ck_pos[visible]
            self.forget_checkpoints(visible)
        super().after_forward()  # drops held tokens a sliding layer cannot see any more
        n_held = self.keys.shape[-2]
        n_out = n_held - self.runner.policy.window
        if not self.evicts or n_out <= 0:
            return
        self.ck_pos = torch.cat([self.ck_pos, self.positions[:n_out]])
        self.checkpoint(n_out)
        self.keep_only(torch.arange(n_out, n_held, device=self.positions.device))


class KVDirectRunner(CacheRunner):
    """Records the forward-pass segments; a mechanism adds its hooks and byte counts."""

    def __init__(
        self, model: TransformerBridge, policy: KVDirect, layers: list[WindowLayer]
    ) -> None:
        super().__init__(model, layers)
        self.policy = policy
        self.segments = Segments()
        self.last_transient = 0

    def before_forward(self, tokens: torch.Tensor) -> None:
        self.segments.add(self.n_seen, tokens.shape[1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = super().forward(tokens)
        self.last_transient = self.transient()
        return logits

    def transient(self) -> int:
        """Bytes of K/V materialised for evicted tokens during the forward pass just run."""
        return max((l.rebuilt_bytes for l in self.layers), default=0)

    def bytes_transient(self) -> int:
        return self.last_transient
