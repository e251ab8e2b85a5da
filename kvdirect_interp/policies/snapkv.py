"""SnapKV (Li et al., arXiv 2404.14469), as published: each prompt compressed once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..memory import Shape, kv_bytes_per_token
from .evict import EvictionPolicy

POOLING = {"avg": F.avg_pool1d, "max": F.max_pool1d}


@dataclass(frozen=True)
class SnapKV(EvictionPolicy):
    """After a forward pass of more than one token (a prompt, or a chat turn's chunk
    appended in a Session), a layer holding more than `budget` tokens keeps, in each KV
    head, the observation window (its last w held tokens, w = min(observation_window,
    chunk length)) plus the `budget - w` earlier tokens with the highest pooled votes; one
    holding at most `budget` is left whole. Votes: the attention of the window's w queries
    to each earlier token, summed over them, then pooled 1-D over the earlier tokens in the
    order held (the prompt's order on its first compression) with width `kernel`: "avg",
    the mean over the kernel with the zero padding counted at the edges (avg_pool1d's
    default), or "max". A one-token pass (decoding) never evicts: the cache grows by one per
    generated token and holds budget + the tokens after the prompt.

    As the authors' snapkv/monkeypatch/snapkv_utils.py (SnapKVCluster.update_kv; init_snapkv
    defaults: window_size 32, kernel_size 5, pooling 'avgpool'; max_capacity_prompt is the
    budget here; their LongBench ablations: kernel=7, pooling="max"). Their code is
    undefined where budget <= w (it asserts max_capacity_prompt - window_size > 0): here
    that keeps the chunk's last `budget` tokens, a window over the end of the prompt. That
    is every budget <= observation_window on a chunk of at least `budget` tokens; a shorter
    chunk is all window, and earlier tokens fill the rest.

    per_head=True (the default) selects per KV head, as published (top-k of the pooled votes
    [bsz, num_heads, keys] in each head); with grouped-query attention the query heads
    sharing a KV head are averaged, as kvpress's SnapKVPress does. per_head=False keeps one
    set per layer, voted by the mean over all heads. Sliding-window layers (Gemma 3) drop
    every step what they can no longer see, as many tokens in every head and every sliding
    layer (K/V stay rectangular and one mask serves them all: evict.py), so until the
    tokens after the prompt fill the window they may hold fewer than that.
    SnapKVPerStep is the same selection applied at every step the budget is exceeded."""

    observation_window: int = 32
    kernel: int = 5
    pooling: str = "avg"
    per_head: bool = True

    compress_once = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.observation_window, bool) or not (
            isinstance(self.observation_window, int) and self.observation_window >= 1
        ):
            raise ValueError(
                f"observation_window must be an integer >= 1, got {self.observation_window!r}"
            )
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1, got {self.kernel!r}")
        if self.pooling not in POOLING:
            raise ValueError(f"pooling must be one of {list(POOLING)}, got {self.pooling!r}")

    def observe(self, layer, attention: torch.Tensor) -> None:
        # attention [S, q, kv] of one pass of the chunk: keep its last queries' rows [S, kv]
        n = attention.shape[-1]
        rows = [*layer.recent_rows, *attention[:, -self.observation_window :].unbind(1)]
        rows = rows[-self.observation_window :]
        layer.recent_rows = [F.pad(r, (0, n - r.shape[-1])) for r in rows]  # earlier: shorter

    def observed(self, layer) -> int:
        return len(layer.recent_rows)  # min(observation_window, chunk length)

    def scores(self, layer) -> torch.Tensor:
        n, w = layer.keys.shape[-2], self.observed(layer)
        if self.budget <= w:
            # the last `budget`
            return torch.zeros(layer.n_groups, n, dtype=torch.float64, device=layer.keys.device)
        votes = torch.stack(layer.recent_rows).sum(0)[:, : n - w]  # [S, earlier tokens]
        pool = POOLING[self.pooling]
        pooled = pool(votes[:, None], self.kernel, stride=1, padding=self.kernel // 2)[:, 0]
        return F.pad(pooled, (0, w))  # the window's own tokens: protected

    def protected(self, layer) -> torch.Tensor:
        n = layer.keys.shape[-2]
        w = min(self.observed(layer), self.budget)
        return torch.arange(n - w, n, device=layer.keys.device)

    def held_tokens(self, seen: int, prompt: int | None = None) -> int:
        # the prompt compressed to the budget, then every token after it
        prompt = seen if prompt is None else prompt
        if not 0 <= prompt <= seen:
            raise ValueError(f"prompt must be in 0..seen = 0..{seen}, got {prompt!r}")
        return min(prompt, self.budget) + seen - prompt

    def bytes_per_token(self, shape: Shape) -> dict[str, int]:
        return {"kv": kv_bytes_per_token(shape)}  # while decoding every token is kept
