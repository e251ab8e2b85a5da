"""H2O, Heavy-Hitter Oracle (Zhang et al., arXiv 2306.14048)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evict import EvictionPolicy


@dataclass(frozen=True)
class H2O(EvictionPolicy):
    """Keep the `recent` most recent tokens plus the `budget - recent` tokens with the largest
    accumulated attention received. Score: sum over every query so far of its attention to
    the token.

    per_head=True (the default) selects per KV head, as published: the authors' code
    (h2o_hf/utils_real_drop/modify_llama.py) keeps the top-k of `hh_score[heads, keys]` in
    each head; with grouped-query attention the query heads sharing a KV head are averaged
    (kvpress's way). per_head=False keeps one set per layer, scored by the mean over all
    heads (this package's earlier rule, kept to show the difference)."""

    recent: int | None = None  # default: half the budget
    per_head: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recent is not None and not 0 <= self.recent <= self.budget:
            raise ValueError(f"recent must be in 0..budget = 0..{self.budget}, got {self.recent!r}")

    @property
    def n_recent(self) -> int:
        return self.budget // 2 if self.recent is None else self.recent

    def observe(self, layer, attention: torch.Tensor) -> None:
        layer.scores += attention.sum(-2)  # [S, q, kv] -> attention received [S, kv]

    def protected(self, layer) -> torch.Tensor:
        n = layer.keys.shape[-2]
        # the rest: the heaviest hitters
        return torch.arange(n - self.n_recent, n, device=layer.keys.device)
