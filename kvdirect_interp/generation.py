"""generate() and Session: one readable decode loop under any cache policy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import torch

from .chat import chat_tokens, check_messages, continuation_text
from .memory import reset_rss_peak, rss_peak_bytes
from .policies import CachePolicy, FullKV, Runner
from .tokens import TokensLike, to_tokens


@dataclass
class Generation:
    """tokens: [batch, prompt + new]; new_tokens: [batch, new]; logits: per step
    [batch, d_vocab] when kept; memory: one record per forward pass (bytes by kind)."""

    tokens: torch.Tensor
    new_tokens: torch.Tensor
    text: list[str]
    logits: list[torch.Tensor] | None
    memory: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def memory_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.memory)


def check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k, top_p,
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
        probs = sorted_scores.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest set reaching top_p
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


def _measured(runner: Runner, call, *args) -> tuple[torch.Tensor, dict]:
    """Run one forward pass of the runner; bytes held after it and the peak during it."""
    reset_rss_peak()
    logits = call(*args)
    record = {"tokens_seen": runner.n_seen, **{f"{k}_bytes": v for k, v in
                                                 runner.bytes_held().items()},
              "rebuilt_bytes": runner.bytes_transient(), "peak_rss_bytes": rss_peak_bytes()}
    if torch.cuda.is_available() and logits.is_cuda:
        record["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return logits, record


def decode(runner: Runner, logits: torch.Tensor, *, max_new_tokens: int, do_sample: bool,
           temperature: float, top_k, top_p, generator, keep_logits: bool,
           force: torch.Tensor | None = None, stop_token: int | None = None):
    """The loop: pick a token (or take the forced one), feed it, repeat. A `stop_token`
    ends the loop unfed, so a chat template's own end-of-turn marker can follow."""
    new, kept, memory = [], [], []
    for i in range(max_new_tokens):
        if keep_logits:
            kept.append(logits)
        token = force[:, i] if force is not None else pick(
            logits, do_sample, temperature, top_k, top_p, generator)
        new.append(token)
        if stop_token is not None and bool((token == stop_token).all()):
            break
        logits, record = _measured(runner, runner.step, token)
        memory.append(record)
    return torch.stack(new, dim=1), kept, memory, logits


def _prompt_tokens(model, prompt) -> torch.Tensor:
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
        return chat_tokens(model, prompt)
    return to_tokens(model, prompt)


@torch.no_grad()
def generate(model, prompt: TokensLike | Sequence[dict], *, max_new_tokens: int,
             cache: CachePolicy | None = None, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, keep_logits: bool = False,
             force: torch.Tensor | None = None) -> Generation:
    """Decode `max_new_tokens` tokens after `prompt` under a cache policy (FullKV default).

    prompt: text, tokens, or a chat (a list of {"role", "content"} messages, rendered with
    the tokenizer's chat template). Sampling draws from a private torch.Generator seeded
    with `seed`, so two policies with equal logits draw equal tokens. `force` [batch, new]
    feeds given tokens instead of picking (teacher forcing, to compare logits on one path).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    policy = cache if cache is not None else FullKV()
    prompt_tokens = _prompt_tokens(model, prompt)
    n_total = prompt_tokens.shape[1] + max_new_tokens
    if n_total > model.cfg.n_ctx:
        raise ValueError(f"prompt ({prompt_tokens.shape[1]} tokens) + max_new_tokens "
                         f"({max_new_tokens}) exceeds the model's context of {model.cfg.n_ctx}")
    if force is not None and tuple(force.shape) != (prompt_tokens.shape[0], max_new_tokens):
        raise ValueError(f"force must be [batch, max_new_tokens] = "
                         f"{[prompt_tokens.shape[0], max_new_tokens]}, got {tuple(force.shape)}")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    start = time.perf_counter()
    runner = policy.runner(model)
    logits, record = _measured(runner, runner.prefill, prompt_tokens)
    new, kept, memory, _ = decode(runner, logits, max_new_tokens=max_new_tokens,
                                  do_sample=do_sample, temperature=temperature, top_k=top_k,
                                  top_p=top_p, generator=generator, keep_logits=keep_logits,
                                  force=force)
    text = [model.tokenizer.decode(row) for row in new]
    return Generation(torch.cat([prompt_tokens, new], dim=1), new, text,
                      kept if keep_logits else None, [record, *memory],
                      time.perf_counter() - start)


class Session:
    """A multi-turn chat that keeps its cache state between turns.

    Each `say` appends the user's message (and the template's turn markers) to the tokens
    already processed, as one forward pass, then decodes the reply. The policy's state
    carries over, so a 20-turn chat under KVDirect keeps its window and checkpoints.
    """

    def __init__(self, model, cache: CachePolicy | None = None, *, seed: int | None = None,
                 system: str | None = None) -> None:
        self.model = model
        self.runner = (cache if cache is not None else FullKV()).runner(model)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.logits = None  # logits after the last processed token
        self.tokens: list[int] = []

    @torch.no_grad()
    def say(self, text: str, *, max_new_tokens: int, do_sample: bool = False,
            temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
            stop_at_eos: bool = True) -> Generation:
        """Add a user turn and decode the reply (until the end-of-turn token, or
        max_new_tokens)."""
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        user = check_messages([{"role": "user", "content": text}])
        tok = self.model.tokenizer
        if any(m["role"] == "assistant" for m in self.messages):
            delta = continuation_text(tok, self.messages, user)
            new_ids = tok(delta, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            new_ids = chat_tokens(self.model, [*self.messages, *user])
        new_ids = new_ids.to(self.model.cfg.device)
        total = len(self.tokens) + new_ids.shape[1] + max_new_tokens
        if total > self.model.cfg.n_ctx:
            raise ValueError(f"this turn would bring the chat to {total} tokens, past the "
                             f"model's context of {self.model.cfg.n_ctx}")
        start = time.perf_counter()
        logits, record = _measured(self.runner, self.runner.forward, new_ids)
        new, _, memory, self.logits = decode(
            self.runner, logits, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_k=top_k, top_p=top_p, generator=self.generator,
            keep_logits=False, stop_token=tok.eos_token_id if stop_at_eos else None)
        fed = new[:, :len(memory)]  # a final stop token is not fed
        reply = tok.decode(fed[0], skip_special_tokens=True).strip() or "(no text)"
        self.messages += [*user, {"role": "assistant", "content": reply}]
        self.tokens += new_ids[0].tolist() + fed[0].tolist()
        return Generation(torch.cat([new_ids, new], dim=1), new, [reply], None,
                          [record, *memory], time.perf_counter() - start)
