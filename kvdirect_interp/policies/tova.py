"""TOVA, Token Omission Via Attention (Oren et al., arXiv 2401.06104)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evict import EvictionPolicy


@dataclass(frozen=True)
class TOVA(EvictionPolicy):
    """Keep the `budget` tokens that the newest query attends to most. Score: the attention
    row of the last query only, averaged over heads; earlier steps do not count. As in the
    paper, the newest token competes too and may be the one dropped.

    One set of tokens per layer, shared by every head, as published: the authors'
    src/tova_cache.py averages the attention over heads before choosing (kvpress's
    TOVAPress, reviewed by an author, does the same)."""

    def observe(self, layer, attention: torch.Tensor) -> None:
        layer.scores = attention[:, -1].clone()  # [S=1, kv]; nothing protected
