"""NoCache: recompute the whole sequence at every step; holds only token ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..cost import Arch, forward_flops
from ..hooks import forward as model_forward  # the one entry point: hooks.forward
from ..memory import TOKEN_ID_BYTES, Shape
from .base import CachePolicy, Runner

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class _NoCacheRunner(Runner):
    def __init__(self, model: TransformerBridge) -> None:
        super().__init__(model)
        self.tokens = None  # [batch, n_seen]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = tokens if self.tokens is None else torch.cat([self.tokens, tokens], dim=1)
        self.n_seen += tokens.shape[1]
        return model_forward(self.model, self.tokens, logits_to_keep=1)[:, -1]

    def bytes_held(self) -> dict[str, int]:
        return {"token_ids": self.tokens.numel() * TOKEN_ID_BYTES}


@dataclass(frozen=True)
class NoCache(CachePolicy):
    """No K/V kept: every step re-runs the full sequence (claim 3)."""

    def runner(self, model: TransformerBridge) -> Runner:
        return _NoCacheRunner(model)

    def bytes_per_token(self, shape: Shape) -> dict[str, int]:
        return {"token_ids": TOKEN_ID_BYTES}

    def step_flops(self, arch: Arch, context: int, prompt: int | None = None) -> float:
        # all context + 1 tokens, causal attention: (context + 2) / 2 keys each on average
        return forward_flops(arch, context + 1, (context + 2) / 2, logits=1)
