"""SnapKV's selection applied at every step the budget is exceeded (not the published
method, which compresses the prompt once: snapkv.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .evict import EvictionPolicy


@dataclass(frozen=True)
class SnapKVPerStep(EvictionPolicy):
    """Keep the last `observation_window` tokens, plus the `budget - observation_window`
    tokens with the highest pooled score, after every forward pass that leaves more than
    `budget`. Score: attention from the last `observation_window` queries (of this pass and
    the passes before it), summed, smoothed by 1-D average pooling of width `kernel` (edges
    averaged over the valid cells only) so neighbours of important tokens survive too.
    The paper compresses the prompt once, pooling over neighbours in the text (`SnapKV`);
    applied at every eviction here, the cache stays at `budget` while decoding and pooling
    runs over neighbours among the tokens each head holds. This was this package's `SnapKV`
    until that became the published method (same settings, same results).

    per_head=True (the default) selects per KV head, as published: the authors'
    snapkv_utils.py takes the top-k of the pooled votes [bsz, num_heads, keys] in each head;
    with grouped-query attention the query heads sharing a KV head are averaged (kvpress's
    way). per_head=False keeps one set per layer, voted by the mean over all heads (this
    package's earlier rule, kept to show the difference)."""

    observation_window: int = 8
    kernel: int = 5
    per_head: bool = True

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
        # attention [S, q, kv]; rows kept: the last queries' rows, each [S, kv]
        n = attention.shape[-1]
        rows = [*layer.recent_rows, *attention.unbind(1)][-self.observation_window :]
        rows = [F.pad(r, (0, n - r.shape[-1])) for r in rows]  # older rows are shorter: pad
        layer.recent_rows = rows
        votes = torch.stack(rows).sum(0)  # [S, kv]
        layer.scores = F.avg_pool1d(
            votes[:, None],
            self.kernel,
            stride=1,
            padding=self.kernel // 2,
            count_include_pad=False,
        )[:, 0]

    def protected(self, layer) -> torch.Tensor:
        n = layer.keys.shape[-2]
        # the observation window
        return torch.arange(n - self.observation_window, n, device=layer.keys.device)
