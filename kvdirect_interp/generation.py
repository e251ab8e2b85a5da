"""generate(): one readable decode loop under any cache policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .policies import CachePolicy, FullKV
from .tokens import TokensLike, to_tokens


@dataclass
class Generation:
    """tokens: [batch, prompt + new]; new_tokens: [batch, new]; logits: per step [batch,
    d_vocab] when kept; memory: bytes held by kind after each step."""

    tokens: torch.Tensor
    new_tokens: torch.Tensor
    text: list[str]
    logits: list[torch.Tensor] | None
    memory: list[dict[str, int]] = field(default_factory=list)


def _check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k, top_p,
          generator) -> torch.Tensor:
    """Next token [batch] from logits [batch, d_vocab]: argmax, or a seeded draw."""
    if not do_sample:
        return logits.argmax(-1)
    scores = logits.double() / temperature
    if top_k is not None:
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum - sorted_scores.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model, prompt: TokensLike, *, max_new_tokens: int, cache: CachePolicy | None = None,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None,
             keep_logits: bool = False) -> Generation:
    """Decode `max_new_tokens` tokens after `prompt` under a cache policy (FullKV by default).

    Sampling draws from a private torch.Generator seeded with `seed`, so two policies with
    equal logits draw equal tokens.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    policy = cache if cache is not None else FullKV()
    prompt_tokens = to_tokens(model, prompt)
    if prompt_tokens.shape[1] + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(f"prompt ({prompt_tokens.shape[1]} tokens) + max_new_tokens "
                         f"({max_new_tokens}) exceeds the model's context of {model.cfg.n_ctx}")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    runner = policy.runner(model)
    logits = runner.prefill(prompt_tokens)
    new, kept, memory = [], [], []
    for _ in range(max_new_tokens):
        if keep_logits:
            kept.append(logits)
        token = _pick(logits, do_sample, temperature, top_k, top_p, generator)
        new.append(token)
        logits = runner.step(token)
        memory.append(runner.bytes_held())
    new_tokens = torch.stack(new, dim=1)
    text = [model.tokenizer.decode(row) for row in new_tokens]
    return Generation(torch.cat([prompt_tokens, new_tokens], dim=1), new_tokens, text,
                      kept if keep_logits else None, memory)
