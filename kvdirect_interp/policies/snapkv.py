"""SnapKV (Li et al., arXiv 2404.14469), applied whenever the budget is exceeded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .evict import EvictionPolicy


@dataclass(frozen=True)
class SnapKV(EvictionPolicy):
    """Keep the last `observation_window` tokens, plus the `budget - observation_window`
    tokens with the highest pooled score. Score: attention from the last
    `observation_window` queries, summed (mean over heads), smoothed by 1-D average pooling
    of width `kernel` so neighbours of important tokens survive too. The paper compresses
    the prompt once, pooling over neighbours in the text; applied at every eviction here,
    pooling runs over neighbours among the held tokens."""

    observation_window: int = 8
    kernel: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.observation_window <= self.budget:
            raise ValueError(
                f"observation_window must be in 1..budget = 1..{self.budget}, got "
                f"{self.observation_window!r}"
            )
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1, got {self.kernel!r}")

    def observe(self, layer, attention: torch.Tensor) -> None:
        rows = [r for r in layer.recent_rows]
        rows += list(attention)  # each [kv]; older rows are shorter: pad with zeros
        n = attention.shape[-1]
        rows = [F.pad(r, (0, n - r.shape[0])) for r in rows[-self.observation_window :]]
        layer.recent_rows = rows
        votes = torch.stack(rows).sum(0)
        layer.scores = F.avg_pool1d(
            votes[None, None],
            self.kernel,
            stride=1,
            padding=self.kernel // 2,
            count_include_pad=False,
        )[0, 0]

    def protected(self, layer) -> torch.Tensor:
        n = layer.keys.shape[-2]
        return torch.arange(n - self.observation_window, n)  # the observation window
