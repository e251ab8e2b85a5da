"""H2O, Heavy-Hitter Oracle (Zhang et al., arXiv 2306.14048)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evict import EvictionPolicy


@dataclass(frozen=True)
class H2O(EvictionPolicy):
    """Keep the `recent` most recent tokens plus the `budget - recent` tokens with the largest
    accumulated attention received. Score: sum over every query so far of its attention
    to the token (mean over heads)."""

    recent: int | None = None  # default: half the budget

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recent is not None and not 0 <= self.recent <= self.budget:
            raise ValueError(f"recent must be in 0..budget = 0..{self.budget}, got {self.recent!r}")

    @property
    def n_recent(self) -> int:
        return self.budget // 2 if self.recent is None else self.recent

    def observe(self, layer, attention: torch.Tensor) -> None:
        layer.scores += attention.sum(0)

    def protected(self, layer) -> torch.Tensor:
        n = layer.keys.shape[-2]
        return torch.arange(n - self.n_recent, n)  # the rest: the heaviest hitters
