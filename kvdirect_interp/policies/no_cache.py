"""NoCache: recompute the whole sequence at every step; holds only token ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _plain
from .base import CachePolicy, Runner


class _NoCacheRunner(Runner):
    def __init__(self, model) -> None:
        super().__init__(model)
        self.tokens = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = tokens if self.tokens is None else torch.cat([self.tokens, tokens], dim=1)
        self.n_seen += tokens.shape[1]
        return _plain.logits(self.model, self.tokens, logits_to_keep=1)[:, -1]

    def bytes_held(self) -> dict[str, int]:
        return {"token_ids": self.tokens.numel() * 4}  # int32 ids suffice for any vocab here


@dataclass(frozen=True)
class NoCache(CachePolicy):
    """No K/V kept: every step re-runs the full sequence (claim 3)."""

    def runner(self, model) -> Runner:
        return _NoCacheRunner(model)
