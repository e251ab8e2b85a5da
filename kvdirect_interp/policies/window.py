"""WindowOnly: keep the K/V of the `budget` most recent tokens; drop the rest for good."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evict import EvictionPolicy


@dataclass(frozen=True)
class WindowOnly(EvictionPolicy):
    """Sliding-window eviction: the last `budget` tokens keep K/V (the paper's panel 2). One
    set per layer, shared by every head: the rule is positional."""

    needs_attention = False

    def protected(self, layer) -> torch.Tensor:
        n = layer.keys.shape[-2]
        # the whole budget: no score is consulted
        return torch.arange(n - self.budget, n, device=layer.keys.device)
