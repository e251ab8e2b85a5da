"""FullKV: the standard cache (HF DynamicCache) that keeps every token's K and V."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from ..cost import Arch, forward_flops
from ..hooks import forward as model_forward  # the one entry point: hooks.forward
from ..memory import Shape, kv_bytes_per_token
from .base import CachePolicy, Runner, tensor_bytes

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class _FullRunner(Runner):
    def __init__(self, model: TransformerBridge) -> None:
        super().__init__(model)
        # sliding-window layers (Gemma 3, Mistral) keep only their window, as HF's cache does
        self.cache = DynamicCache(config=model.original_model.config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = model_forward(self.model, tokens, past_key_values=self.cache, logits_to_keep=1)
        self.n_seen += tokens.shape[1]
        return logits[:, -1]

    def bytes_held(self) -> dict[str, int]:
        return {
            "kv": tensor_bytes(
                *(
                    t
                    for l in self.cache.layers
                    for t in (getattr(l, "keys", None), getattr(l, "values", None))
                )
            )
        }


@dataclass(frozen=True)
class FullKV(CachePolicy):
    """Keep K and V of every token at every layer (what `generate` with a cache does)."""

    def runner(self, model: TransformerBridge) -> Runner:
        return _FullRunner(model)

    def bytes_per_token(self, shape: Shape) -> dict[str, int]:
        return {"kv": kv_bytes_per_token(shape)}

    def step_flops(self, arch: Arch, context: int, prompt: int | None = None) -> float:
        return forward_flops(arch, 1, context + 1)  # the new token attends to every key
