"""The shared base of every cache policy.

A policy is a small frozen dataclass of settings. `runner(model)` makes a Runner that holds
one generation's state; the decode loop in generation.py only calls `prefill` and `step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class Runner:
    """One generation's state under a policy. Logits returned are [batch, d_vocab], float."""

    def __init__(self, model) -> None:
        self.model = model
        self.n_seen = 0  # tokens processed so far (prompt + generated)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Process the prompt [batch, pos]; logits of its last position."""
        raise NotImplementedError

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Process one new token [batch]; logits of its position."""
        raise NotImplementedError

    def bytes_held(self) -> dict[str, int]:
        """Bytes this policy holds now, by kind (kv, residual, token_ids)."""
        return {}


@dataclass(frozen=True)
class CachePolicy:
    def runner(self, model) -> Runner:
        raise NotImplementedError
