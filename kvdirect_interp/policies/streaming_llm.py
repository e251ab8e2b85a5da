"""StreamingLLM (Xiao et al., arXiv 2309.17453): attention sinks plus a recent window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evict import EvictionPolicy


@dataclass(frozen=True)
class StreamingLLM(EvictionPolicy):
    """Keep the first `sinks` tokens of the sequence (attention sinks) and the most recent
    `budget - sinks` tokens. Scoring rule: none; position alone decides. Keys keep their
    original rotary positions (the paper re-positions them by cache slot, which matters only
    past the training length).

    One set of tokens per layer, shared by every head, as published: the rule is positional,
    so every head keeps the same sinks and window (the authors' streaming_llm/kv_cache.py
    slices the sequence dimension for all heads at once)."""

    sinks: int = 4
    needs_attention = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.sinks < self.budget:
            raise ValueError(
                f"sinks must be in 0..budget-1 = 0..{self.budget - 1}, got {self.sinks!r}"
            )

    def protected(self, layer) -> torch.Tensor:
        # every kept token is protected (no score is consulted): the sinks still held, then
        # as many recent tokens as the budget leaves
        n = layer.keys.shape[-2]
        # positions [kv_heads, n]: rows are equal (one set per layer), so read the first
        sinks = (layer.positions[0] < self.sinks).nonzero()[:, 0][: self.sinks]
        recent = torch.arange(n - (self.budget - len(sinks)), n, device=layer.keys.device)
        return torch.cat([sinks, recent])
