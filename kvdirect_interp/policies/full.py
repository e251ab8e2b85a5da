"""FullKV: the standard cache (HF DynamicCache) that keeps every token's K and V."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .. import _plain
from .base import CachePolicy, Runner, tensor_bytes


class _FullRunner(Runner):
    def __init__(self, model) -> None:
        super().__init__(model)
        # sliding-window layers (Gemma 3, Mistral) keep only their window, as HF's cache does
        self.cache = DynamicCache(config=model.original_model.config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = _plain.logits(self.model, tokens, past_key_values=self.cache, logits_to_keep=1)
        self.n_seen += tokens.shape[1]
        return logits[:, -1]

    def bytes_held(self) -> dict[str, int]:
        return {"kv": tensor_bytes(*(t for l in self.cache.layers
                                     for t in (getattr(l, "keys", None), getattr(l, "values", None))))}


@dataclass(frozen=True)
class FullKV(CachePolicy):
    """Keep K and V of every token at every layer (what `generate` with a cache does)."""

    def runner(self, model) -> Runner:
        return _FullRunner(model)
