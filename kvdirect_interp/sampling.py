"""Sampling: how the next token is picked from a step's logits (greedy or a seeded draw),
checked once."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: argmax (do_sample=False), or a draw from the softmax of
    logits / temperature, restricted to the top_k and then the top_p nucleus. The draw uses
    a private torch.Generator seeded with `seed` (None: torch's global generator), so two
    policies with equal logits draw equal tokens. Checked once, here."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be None or in (0, 1], got {self.top_p!r}")

    def generator(self) -> torch.Generator | None:
        """A fresh generator seeded with `seed`, or None when no seed is set."""
        return torch.Generator().manual_seed(self.seed) if self.seed is not None else None

    def pick(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Next token [batch] from logits [batch, d_vocab]: argmax, or a draw (in float64)."""
        if not self.do_sample:
            return logits.argmax(-1)
        scores = logits.double() / self.temperature
        if self.top_k is not None:
            kth = scores.topk(min(self.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p is not None:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            probs = sorted_scores.softmax(-1)
            drop = probs.cumsum(-1) - probs >= self.top_p  # keep the smallest set reaching top_p
            scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
        return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


GREEDY = Sampling()


def check_max_new_tokens(max_new_tokens) -> None:
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
