"""TOVA, Token Omission Via Attention (Oren et al., arXiv 2401.06104)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evict import EvictionPolicy


@dataclass(frozen=True)
class TOVA(EvictionPolicy):
    """Keep the `budget` tokens that the newest query attends to most (mean over heads).
    Score: the attention row of the last query only; earlier steps do not count. As in the
    paper, the newest token competes too and may be the one dropped."""

    def observe(self, layer, attention: torch.Tensor) -> None:
        layer.scores = attention[-1].clone()  # nothing protected: top-budget by score
