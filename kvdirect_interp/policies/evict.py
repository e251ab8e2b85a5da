"""The shared mechanics of the eviction baselines: a per-layer token budget and scores.

Each baseline is a dataclass with a `budget` (at most that many tokens keep K/V after every
step). When a layer holds more, `keep` keeps its `protected` tokens (a recent window, attention
sinks, an observation window) plus the highest-scored of the rest, by `scores` (what `observe`
folded into the layer from the attention pattern of each forward pass). A baseline supplies
`observe` and/or `protected`; the selection is shared. One set of kept tokens per layer,
shared by all heads (scores are averaged over heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..cost import Arch, forward_flops
from ..memory import Shape
from .base import CachePolicy, CacheRunner, PolicyLayer, check_fits, sliding_windows, tensor_bytes

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class EvictingLayer(PolicyLayer):
    """Held K/V plus one float64 score per held token (`scores`), kept aligned on eviction."""

    def __init__(self, layer: int, policy: EvictionPolicy, sliding_window: int | None) -> None:
        super().__init__(layer, sliding_window)
        self.policy = policy
        self.scores = torch.zeros(0, dtype=torch.float64)  # one per held token
        self.recent_rows: list[torch.Tensor] = []  # SnapKV: last queries' attention rows

    def append(self, key_states, value_states) -> None:
        super().append(key_states, value_states)
        q = key_states.shape[-2]
        self.scores = torch.cat([self.scores, torch.zeros(q, dtype=torch.float64)])

    def keep_only(self, index: torch.Tensor) -> None:
        super().keep_only(index)
        self.scores = self.scores[index]
        self.recent_rows = [row[index] for row in self.recent_rows]

    def after_forward(self) -> None:
        super().after_forward()  # sliding layers first drop what they can no longer see
        n = self.keys.shape[-2]
        if n > self.policy.budget:
            index = self.policy.keep(self).sort().values
            if index.numel() != self.policy.budget:
                raise RuntimeError(
                    f"{self.policy.name}.keep returned "
                    f"{index.numel()} tokens for a budget of {self.policy.budget}"
                )
            self.keep_only(index)


def top_indices(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the k highest of `scores` [n] (ties: the earlier token), skipping the
    indices `exclude`."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    s = scores.clone()
    if exclude is not None:
        s[exclude] = float("-inf")
    # stable order: sort by score descending, then by index ascending
    order = torch.argsort(-s, stable=True)
    return order[:k]


class _EvictionRunner(CacheRunner):
    def __init__(self, model: TransformerBridge, policy: EvictionPolicy) -> None:
        layers = [EvictingLayer(l, policy, w) for l, w in enumerate(sliding_windows(model))]
        super().__init__(model, layers)
        self.policy = policy

    def hooks(self):
        if not self.policy.needs_attention:
            return []

        def observer(layer: EvictingLayer):
            def observe(pattern, hook):
                # pattern: [batch, heads, q, kv]; kv matches the keys update() returned
                self.policy.observe(layer, pattern[0].detach().to(torch.float64).mean(0))

            return observe

        return [
            (f"blocks.{layer.layer}.attn.hook_pattern", observer(layer)) for layer in self.layers
        ]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Masks are built as if held keys were the most recent positions. After scattered
        # evictions on a sliding-window layer that would let a multi-token chunk see keys
        # beyond its window, so such chunks go one token at a time (exact, slower).
        scattered = any(
            l.sliding_window is not None
            and len(l.positions)
            and int(l.positions[-1] - l.positions[0]) + 1 != len(l.positions)
            for l in self.layers
        )
        if tokens.shape[1] == 1 or not scattered:
            return super().forward(tokens)
        for i in range(tokens.shape[1]):
            logits = super().forward(tokens[:, i : i + 1])
        return logits

    def bytes_held(self) -> dict[str, int]:
        held = super().bytes_held()
        held["scores"] = tensor_bytes(*(t for l in self.layers for t in (l.scores, *l.recent_rows)))
        return held


@dataclass(frozen=True)
class EvictionPolicy(CachePolicy):
    budget: int

    needs_attention = True  # whether `observe` needs the attention pattern (a hook per layer)

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(
                f"budget must be an integer >= 1 (tokens of K/V kept), got {self.budget!r}"
            )

    def runner(self, model: TransformerBridge):
        check_fits(model, "budget", self.budget)
        return _EvictionRunner(model, self)

    def observe(self, layer: EvictingLayer, attention: torch.Tensor) -> None:
        """Fold attention [q, kv] (float64, mean over heads) into layer.scores."""

    def protected(self, layer: EvictingLayer) -> torch.Tensor:
        """Indices (into the held tokens) kept whatever their score; none by default."""
        return torch.zeros(0, dtype=torch.long)

    def scores(self, layer: EvictingLayer) -> torch.Tensor:
        """One score per held token [n]; the highest unprotected ones are kept."""
        return layer.scores

    def keep(self, layer: EvictingLayer) -> torch.Tensor:
        """Indices (into the held tokens) of exactly `budget` tokens to keep: the protected
        ones, and the `budget - len(protected)` best-scored others (ties: the earlier)."""
        protected = self.protected(layer)
        if len(protected) > self.budget:
            raise RuntimeError(
                f"{self.name}.protected returned {len(protected)} tokens for a "
                f"budget of {self.budget}"
            )
        chosen = top_indices(
            self.scores(layer),
            self.budget - len(protected),
            exclude=protected if len(protected) else None,
        )
        return torch.cat([chosen, protected])

    def bytes_per_token(self, shape: Shape) -> dict[str, int]:
        return {}  # past the budget a token costs nothing: its K/V are dropped

    def step_flops(self, arch: Arch, context: int) -> float:
        # attention reads the budget's keys only (+ the new token's own)
        return forward_flops(arch, 1, min(context, self.budget) + 1)
