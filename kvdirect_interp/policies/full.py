"""FullKV: the standard cache (HF DynamicCache) that keeps every token's K and V."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .base import CachePolicy, Runner


class _FullRunner(Runner):
    def __init__(self, model) -> None:
        super().__init__(model)
        self.cache = DynamicCache(config=model.original_model.config)

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.model(tokens, past_key_values=self.cache)
        self.n_seen += tokens.shape[1]
        return logits[:, -1]

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward(tokens)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        return self._forward(token[:, None])

    def bytes_held(self) -> dict[str, int]:
        total = 0
        for layer in self.cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return {"kv": total}


@dataclass(frozen=True)
class FullKV(CachePolicy):
    """Keep K and V of every token at every layer (what `generate` with a cache does)."""

    def runner(self, model) -> Runner:
        return _FullRunner(model)
