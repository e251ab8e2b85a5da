"""generate() and Session: one readable decode loop under any cache policy (how it picks
each token: sampling.py); forced_and_free, the teacher-forced and free runs of one policy
from one prefill, on the same loop. Measuring more than the runner's own bytes and each
pass's seconds is opt in (`observer=`, observers.py)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .chat import chat_tokens, check_messages, continuation_text
from .observers import Observer
from .policies import CachePolicy, FullKV, Runner
from .sampling import GREEDY, Sampling, check_max_new_tokens
from .tokens import TokensLike, to_tokens

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class Generation:
    """tokens: [batch, prompt + new]; new_tokens: [batch, new]; logits: per step
    [batch, d_vocab] when kept; memory: one record per forward pass (bytes by kind, its seconds)."""

    tokens: torch.Tensor
    new_tokens: torch.Tensor
    text: list[str]
    logits: list[torch.Tensor] | None
    memory: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def memory_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.memory)


def _sampling(sampling: Sampling | None, **loose) -> Sampling:
    """`sampling` itself, or a Sampling of the loose arguments given (None: not given)."""
    given = {k: v for k, v in loose.items() if v is not None}
    if sampling is None:
        return Sampling(**given)
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be a Sampling, got {type(sampling).__name__}")
    if given:
        raise ValueError(f"pass either sampling=Sampling(...) or {', '.join(given)}, not both")
    return sampling


# the kinds of bytes a runner holds between passes (a record's rebuilt_bytes are transient)
HELD_KINDS = ("kv_bytes", "residual_bytes", "token_ids_bytes")


def held_bytes(record: dict) -> int:
    """Bytes a memory record says are held, over every kind (absent kinds count 0)."""
    return sum(record.get(k) or 0 for k in HELD_KINDS)


def _measured(runner: Runner, observer: Observer | None, call, *args) -> tuple[torch.Tensor, dict]:
    """Run one forward pass of the runner; its record: tokens seen, the pass's wall-clock
    seconds (the bookkeeping around it not counted), bytes held after it by kind, the bytes
    it rebuilt transiently, and what the `observer` (if any) measured around it."""
    if observer is not None:
        observer.before()
    start = time.perf_counter()
    logits = call(*args)
    seconds = time.perf_counter() - start
    record = {
        "tokens_seen": runner.n_seen,
        "seconds": seconds,
        **{f"{k}_bytes": v for k, v in runner.bytes_held().items()},
        "rebuilt_bytes": runner.bytes_transient(),
    }
    if observer is not None:
        record |= observer.after(logits)
    return logits, record


def decode(
    runner: Runner,
    logits: torch.Tensor,
    *,
    max_new_tokens: int,
    sampling: Sampling,
    generator: torch.Generator | None,
    keep_logits: bool,
    force: torch.Tensor | None = None,
    stop_token: int | None = None,
    feed_last: bool = True,
    observer: Observer | None = None,
    memory: Sequence[dict] = (),
    watch: Callable[[int, torch.Tensor, list[dict]], None] | None = None,
):
    """The loop: pick a token (or take the forced one), feed it, repeat. A `stop_token`
    ends the loop unfed, so a chat template's own end-of-turn marker can follow.
    feed_last=False leaves the last new token unfed, as transformers' and TransformerLens's
    generate do: nothing reads the logits after it (a Session feeds it, its next turn does).
    `watch(i, logits, records)`, if given, sees the logits before each pick (forced_and_free
    forks the runner there).

    logits: [batch, d_vocab] after the last token fed; force: [batch, max_new_tokens];
    memory: the records of earlier passes, which the returned records continue.
    Returns new tokens [batch, new], the kept logits, the memory records (one per token
    fed, after `memory`'s), and the logits after the last one fed."""
    new, kept, memory = [], [], list(memory)
    for i in range(max_new_tokens):
        if keep_logits:
            kept.append(logits)
        if watch is not None:
            watch(i, logits, memory)
        token = force[:, i] if force is not None else sampling.pick(logits, generator)
        new.append(token)
        if stop_token is not None and bool((token == stop_token).all()):
            break
        if not feed_last and i == max_new_tokens - 1:
            break
        logits, record = _measured(runner, observer, runner.step, token)
        memory.append(record)
    return torch.stack(new, dim=1), kept, memory, logits


def _turn(runner: Runner, tokens: torch.Tensor, observer: Observer | None, **decode_kwargs):
    """The one path of generate, Session.say and forced_and_free: feed tokens [batch, q]
    (the prefill of a fresh runner, else a chunk after what it has seen), then decode.
    Returns decode's results with the feed's memory record first."""
    feed = runner.prefill if runner.n_seen == 0 else runner.forward
    logits, record = _measured(runner, observer, feed, tokens)
    return decode(runner, logits, observer=observer, memory=[record], **decode_kwargs)


def _prompt_tokens(model: TransformerBridge, prompt) -> torch.Tensor:
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
        return chat_tokens(model, prompt)
    return to_tokens(model, prompt)


def _checked_prompt(model: TransformerBridge, prompt, max_new_tokens, force) -> torch.Tensor:
    """The prompt's tokens [batch, pos], once the request is known to fit the model."""
    check_max_new_tokens(max_new_tokens)
    prompt_tokens = _prompt_tokens(model, prompt)
    n_total = prompt_tokens.shape[1] + max_new_tokens
    if n_total > model.cfg.n_ctx:
        raise ValueError(
            f"prompt ({prompt_tokens.shape[1]} tokens) + max_new_tokens "
            f"({max_new_tokens}) exceeds the model's context of {model.cfg.n_ctx}"
        )
    if force is not None and tuple(force.shape) != (prompt_tokens.shape[0], max_new_tokens):
        raise ValueError(
            f"force must be [batch, max_new_tokens] = "
            f"{[prompt_tokens.shape[0], max_new_tokens]}, got {tuple(force.shape)}"
        )
    return prompt_tokens


@torch.no_grad()
def generate(
    model: TransformerBridge,
    prompt: TokensLike | Sequence[dict],
    *,
    max_new_tokens: int,
    cache: CachePolicy | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    sampling: Sampling | None = None,
    keep_logits: bool = False,
    force: torch.Tensor | None = None,
    observer: Observer | None = None,
) -> Generation:
    """Decode `max_new_tokens` tokens after `prompt` under a cache policy (FullKV default).

    prompt: text, tokens [batch, pos], or a chat (a list of {"role", "content"} messages,
    rendered with the tokenizer's chat template). Sampling: either `sampling=Sampling(...)`
    or its fields as arguments (do_sample, temperature, top_k, top_p, seed; None: not given,
    Sampling's default), not both; greedy by default. `force` [batch, max_new_tokens] feeds
    given tokens instead of picking (teacher forcing, to compare logits on one path).
    Returns tokens [batch, pos + new], new_tokens [batch, new], logits (per step
    [batch, d_vocab]) if keep_logits, and one memory record per forward pass: the prefill
    and max_new_tokens - 1 steps (the last new token is picked, not fed, as in
    transformers' generate). `observer` (observers.py, e.g. PeakMemory()) adds what it
    measures around each pass to its record; none by default.
    """
    sampling = _sampling(
        sampling, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    policy = cache if cache is not None else FullKV()
    prompt_tokens = _checked_prompt(model, prompt, max_new_tokens, force)
    start = time.perf_counter()
    runner = policy.runner(model)
    new, kept, memory, _ = _turn(
        runner,
        prompt_tokens,
        observer,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        generator=sampling.generator(),
        keep_logits=keep_logits,
        force=force,
        feed_last=False,  # max_new_tokens - 1 decode steps after the prefill
    )
    text = [model.tokenizer.decode(row) for row in new]
    return Generation(
        torch.cat([prompt_tokens, new], dim=1),
        new,
        text,
        kept if keep_logits else None,
        memory,
        time.perf_counter() - start,
    )


def fork(runner: Runner) -> Runner:
    """An independent copy of a runner's state (its cache, checkpoints, scores) that shares
    the model: feeding either one leaves the other as it was."""
    model = runner.model
    shared = [model, *model.modules(), *model.parameters(), *model.buffers()]
    return copy.deepcopy(runner, {id(x): x for x in shared})


@torch.no_grad()
def forced_and_free(
    model: TransformerBridge,
    prompt: TokensLike,
    *,
    max_new_tokens: int,
    cache: CachePolicy,
    force: torch.Tensor,
    observer: Observer | None = None,
) -> tuple[Generation, Generation]:
    """Two generations under one policy from one prefill: `force`d (teacher forcing, logits
    kept) and free (greedy: the policy's own argmax at every step). Until the first step
    where the policy's argmax is not the forced token, both feed the same tokens through the
    same states, so the free run forks the runner there (`fork`) instead of repeating the
    prefill and those steps; with no such step, the free run *is* the forced one (returned
    twice). Each equals `generate(..., force=force, keep_logits=True)` and `generate(...)`
    bit for bit: the same loop runs the same passes on the same states, with the same shapes.

    force: [batch, max_new_tokens]. Returns (forced, free)."""
    prompt_tokens = _checked_prompt(model, prompt, max_new_tokens, force)
    start = time.perf_counter()
    runner = cache.runner(model)
    at_fork = []  # (step, forked runner, logits, records so far) at the first disagreement

    def watch(i: int, logits: torch.Tensor, memory: list[dict]) -> None:
        if not at_fork and not torch.equal(GREEDY.pick(logits), force[:, i]):
            at_fork.append((i, fork(runner), logits, list(memory)))

    greedy = {"sampling": GREEDY, "generator": None, "feed_last": False}
    _, kept, memory, _ = _turn(
        runner, prompt_tokens, observer, max_new_tokens=max_new_tokens, keep_logits=True,
        force=force, watch=watch, **greedy,
    )  # fmt: skip

    def done(new: torch.Tensor, kept_logits, records) -> Generation:
        text = [model.tokenizer.decode(row) for row in new]
        tokens = torch.cat([prompt_tokens, new], dim=1)
        return Generation(tokens, new, text, kept_logits, records, time.perf_counter() - start)

    forced = done(force, kept, memory)
    if not at_fork:
        return forced, forced
    ((i, runner, logits, memory),) = at_fork
    new, _, memory, _ = decode(
        runner, logits, max_new_tokens=max_new_tokens - i, keep_logits=False, memory=memory,
        observer=observer, **greedy,
    )  # fmt: skip
    return forced, done(torch.cat([force[:, :i], new], dim=1), None, memory)


class Session:
    """A multi-turn chat that keeps its cache state between turns.

    Each `say` appends the user's message (and the template's turn markers) to the tokens
    already processed, as one forward pass, then decodes the reply. The policy's state
    carries over, so a 20-turn chat under KVDirect keeps its window and checkpoints. Draws
    come from one generator seeded once with `seed`, shared by every turn.
    """

    def __init__(
        self,
        model: TransformerBridge,
        cache: CachePolicy | None = None,
        *,
        seed: int | None = None,
        system: str | None = None,
    ) -> None:
        self.model = model
        self.runner = (cache if cache is not None else FullKV()).runner(model)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.generator = Sampling(seed=seed).generator()
        self.logits = None  # logits [1, d_vocab] after the last processed token
        self.tokens: list[int] = []

    @torch.no_grad()
    def say(
        self,
        text: str,
        *,
        max_new_tokens: int,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        sampling: Sampling | None = None,
        stop_at_eos: bool = True,
        observer: Observer | None = None,
    ) -> Generation:
        """Add a user turn and decode the reply (until the end-of-turn token, or
        max_new_tokens). Sampling as in `generate`, except the seed: the session's
        generator (Session(seed=...)) draws every turn, so `sampling.seed` must be None.
        `observer` as in `generate`, for this turn's passes."""
        check_max_new_tokens(max_new_tokens)
        sampling = _sampling(
            sampling, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p
        )
        if sampling.seed is not None:
            raise ValueError(
                "Session.say draws with the session's generator: set the seed "
                f"once in Session(seed=...), not in say (got seed={sampling.seed!r})"
            )
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
            raise ValueError(
                f"this turn would bring the chat to {total} tokens, past the "
                f"model's context of {self.model.cfg.n_ctx}"
            )
        start = time.perf_counter()
        new, _, memory, self.logits = _turn(
            self.runner,
            new_ids,
            observer,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            generator=self.generator,
            keep_logits=False,
            stop_token=tok.eos_token_id if stop_at_eos else None,
        )
        fed = new[:, : len(memory) - 1]  # a final stop token is not fed
        reply = tok.decode(fed[0], skip_special_tokens=True).strip() or "(no text)"
        self.messages += [*user, {"role": "assistant", "content": reply}]
        self.tokens += new_ids[0].tolist() + fed[0].tolist()
        return Generation(
            torch.cat([new_ids, new], dim=1),
            new,
            [reply],
            None,
            memory,
            time.perf_counter() - start,
        )
