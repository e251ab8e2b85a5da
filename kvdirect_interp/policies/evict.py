"""The shared mechanics of the eviction baselines: a token budget per layer and KV head.

Each baseline is a dataclass with a `budget` (at most that many tokens keep K/V after every
step, in every KV head). When a layer holds more, `keep` keeps its `protected` tokens (a
recent window, attention sinks, an observation window) plus the highest-scored of the rest,
by `scores` (what `observe` folded into the layer from the attention pattern of each forward
pass). A baseline supplies `observe` and/or `protected`; the selection is shared.

Selection groups. A policy with `per_head` True (H2O and SnapKV by default, as published)
selects once per KV head: the attention of the query heads that share a KV head
(grouped-query attention) is averaged into that head's scores, as kvpress does, and each KV
head keeps its own `budget` tokens. With `per_head` False (TOVA, StreamingLLM, WindowOnly;
H2O/SnapKV on request) the attention is averaged over all heads and one set of tokens is
kept per layer, shared by every head. Either way every KV head holds the same number of
tokens, so K/V stay rectangular [batch, kv_heads, n, d_head] and are gathered per head.

When. A baseline evicts after every forward pass that leaves a layer holding more than its
budget, so decoding holds the budget. One with `compress_once` True (SnapKV as published)
evicts only after a chunk of more than one token (a prompt, or a chat turn appended in a
Session; the runner announces each chunk, `EvictingLayer.chunk`, even where it feeds a chunk
one token at a time) and never after a one-token decode step, so the cache grows by one per
generated token (`held_tokens`). Such a policy scores a chunk from its own attention when it
compresses (`recent_rows`) and keeps no running `scores`.

Shapes: S, the number of selection groups, is kv_heads (per head) or 1 (shared). Scores are
[S, n]; `keep` returns indices [S, budget] into the held tokens of each group. What each head
kept is inspectable: `EvictingLayer.positions`, or `runner.kept_positions()` for all layers,
gives the original token positions [kv_heads, n] (ascending per head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..cost import Arch, forward_flops
from ..memory import Shape, sliding_windows
from .base import CachePolicy, CacheRunner, PolicyLayer, check_fits, tensor_bytes

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def gather_heads(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t [batch, kv_heads, n, d] at per-head token indices [S, k] (S = kv_heads, or 1 for
    the same tokens in every head) -> [batch, kv_heads, k, d]."""
    b, h, _, d = t.shape
    return t.gather(2, index[None, :, :, None].expand(b, h, -1, d))


class EvictingLayer(PolicyLayer):
    """Held K/V [batch, kv_heads, n, d_head], the original token position of each held key
    per head (`positions`, long [kv_heads, n]) and the policy's float64 scores per selection
    group (`scores` [S, n]), all kept aligned on eviction.

    `positions` is what a reader inspects: row h lists, ascending, the positions whose K/V
    KV head h still holds (every row equal when the policy selects per layer). `chunk`: the
    positions of the runner's forward call this pass belongs to (a call fed one token at a
    time is one chunk of several passes), which compress-once policies wait for."""

    def __init__(self, layer: int, policy: EvictionPolicy, sliding_window: int | None) -> None:
        super().__init__(layer, sliding_window)
        self.policy = policy
        self.positions = torch.zeros(0, 0, dtype=torch.long)  # [kv_heads, n] once K/V arrive
        self.scores = torch.zeros(0, 0, dtype=torch.float64)  # [S, n]
        self.recent_rows: list[torch.Tensor] = []  # SnapKV: last queries' attention, [S, n]
        self.chunk = range(0)  # the positions of the chunk this pass belongs to

    @property
    def n_groups(self) -> int:
        """S: rows of `scores` (kv_heads when selecting per head, else 1)."""
        return self.keys.shape[1] if self.policy.per_head else 1

    def head_positions(self) -> torch.Tensor:
        return self.positions

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        device = key_states.device
        self.positions = torch.zeros(key_states.shape[1], 0, dtype=torch.long, device=device)
        self.scores = torch.zeros(self.n_groups, 0, dtype=torch.float64, device=device)

    def append(self, key_states, value_states) -> None:
        # not PolicyLayer.append: its positions are one row shared by all heads
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        new = torch.arange(self.seen, self.seen + q, device=self.positions.device)
        new = new.expand(self.positions.shape[0], q)
        self.positions = torch.cat([self.positions, new], dim=-1)
        if not self.policy.compress_once:  # compress-once policies keep no running scores
            self.scores = torch.cat([self.scores, self.scores.new_zeros(self.n_groups, q)], -1)
        if self.seen + q > self.chunk.stop:  # a pass no runner announced: a chunk of its own
            self.chunk = range(self.seen, self.seen + q)
        self.seen += q

    def keep_only(self, index: torch.Tensor) -> None:
        """Keep, in each selection group, the held tokens at `index` [S, k] (ascending)."""
        self.keys = gather_heads(self.keys, index)
        self.values = gather_heads(self.values, index)
        self.positions = self.positions.gather(1, index.expand(self.positions.shape[0], -1))
        if not self.policy.compress_once:
            self.scores = self.scores.gather(1, index)
        self.recent_rows = [row.gather(1, index) for row in self.recent_rows]

    def out_of_window(self) -> torch.Tensor:
        """Held tokens a sliding-window layer will never attend to again (bool [S, n])."""
        positions = self.positions[: self.n_groups]  # one row per group (rows equal if S=1)
        if self.sliding_window is None:
            return torch.zeros_like(positions, dtype=torch.bool)
        # the next query sits at position `seen`; it sees positions > seen - window
        return positions <= self.seen - self.sliding_window

    def drop_out_of_window(self, every_head: bool = False) -> None:
        """Drop what a sliding-window layer can no longer see, as far as every head can: rows
        are ascending, so a head's unseeable tokens are a prefix of its row, and the
        shortest such prefix goes from every head. Longer prefixes stay (K/V must stay
        rectangular) and `keep` never chooses them; the budget trims them next.

        every_head=True (compress-once policies: no budget trims them while decoding): the
        longest such prefix goes from every head, so no head keeps a token it cannot see; a
        head with fewer unseeable tokens drops as many of its oldest (the next to leave the
        window). Tokens fed since the last compression are never among those: every head
        holds them all, behind the older ones."""
        outside = self.out_of_window()
        counts = outside.sum(1)
        common = int(counts.max() if every_head else counts.min()) if outside.numel() else 0
        if common:
            n = outside.shape[1]
            keep = torch.arange(common, n, device=outside.device)
            self.keep_only(keep.expand(outside.shape[0], -1))

    def after_forward(self) -> None:
        once = self.policy.compress_once
        self.drop_out_of_window(every_head=once)  # sliding layers: what they can no longer see
        if once and (self.seen < self.chunk.stop or len(self.chunk) == 1):
            return  # compress-once: only after the last pass of a chunk of 2+ tokens
        if self.keys.shape[-2] > self.policy.budget:
            index = self.policy.keep(self)
            if tuple(index.shape) != (self.n_groups, self.policy.budget):
                raise RuntimeError(
                    f"{self.policy.name}.keep returned indices of shape {tuple(index.shape)} "
                    f"for a budget of {self.policy.budget} in {self.n_groups} group(s)"
                )
            self.keep_only(index.sort(dim=-1).values)
        if once:
            self.recent_rows = []  # the chunk's observation window is spent
        # Unreachable while every head held min(budget, visible) tokens before the pass: a
        # pass of q tokens moves at most q old positions out of the window and adds q new
        # ones, so each head still sees at least min(budget, visible) and, where heads'
        # counts differ, at least the budget (all of which `keep` chooses from).
        if self.out_of_window().any():
            raise RuntimeError(
                f"layer {self.layer}: a head holds keys outside its sliding window after "
                f"{self.policy.name}.keep"
            )


def top_indices(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of `scores` [S, n], the indices of its k highest (ties: the earlier token),
    skipping the indices `exclude` [S, m] of that row -> [S, k]."""
    if k <= 0:
        return torch.zeros(scores.shape[0], 0, dtype=torch.long, device=scores.device)
    s = scores.clone()
    if exclude is not None and exclude.numel():
        s.scatter_(1, exclude, float("-inf"))
    # stable order: sort by score descending, then by index ascending
    return torch.argsort(-s, dim=-1, stable=True)[:, :k]


def per_group(t: torch.Tensor, n_groups: int) -> torch.Tensor:
    """A policy's answer [n] (the same for every group) or [S, n] as [S, n]."""
    return t.expand(n_groups, -1) if t.dim() == 1 else t


def group_attention(pattern: torch.Tensor, kv_heads: int, per_head: bool) -> torch.Tensor:
    """An attention pattern [heads, q, kv] -> float64 [S, q, kv]: averaged over the query heads
    that share each KV head (query head i reads KV head i // (heads // kv_heads), as HF's
    repeat_kv lays them out), or over all heads when one set is kept per layer."""
    p = pattern.detach().to(torch.float64)
    if not per_head:
        return p.mean(0, keepdim=True)
    heads, q, kv = p.shape
    return p.view(kv_heads, heads // kv_heads, q, kv).mean(1)


def align_sliding(layers: list[EvictingLayer]) -> None:
    """The model builds one mask for all its sliding layers, so they must hold as many
    keys each. Layers that trim to the budget every pass do (min(budget, visible)); a
    compress-once policy's sliding layers lose scattered prompt tokens as the window
    passes them, each its own: every sliding layer keeps the newest n of each head's,
    n the fewest any holds (what it drops are tokens kept at a compression: each holds
    every token fed since that it can still see)."""
    sliding = [l for l in layers if l.sliding_window is not None and l.keys is not None]
    if not sliding:
        return
    n = min(l.keys.shape[-2] for l in sliding)
    for layer in sliding:
        held = layer.keys.shape[-2]
        if held > n:
            keep = torch.arange(held - n, held, device=layer.positions.device)
            layer.keep_only(keep.expand(layer.n_groups, -1))


def scattered(layer: EvictingLayer) -> bool:
    """Whether a sliding layer holds anything but the last n positions in some head."""
    if layer.sliding_window is None or layer.keys is None:
        return False
    n = layer.positions.shape[-1]
    last = torch.arange(layer.seen - n, layer.seen, device=layer.positions.device)
    return not bool((layer.positions == last).all())


class _EvictionRunner(CacheRunner):
    def __init__(self, model: TransformerBridge, policy: EvictionPolicy) -> None:
        layers = [EvictingLayer(l, policy, w) for l, w in enumerate(sliding_windows(model))]
        super().__init__(model, layers)
        self.policy = policy

    def hooks(self):
        if not self.policy.needs_attention:
            return []
        if self.policy.compress_once and len(self.layers[0].chunk) == 1:
            return []  # a decode step: a compress-once policy reads no attention there

        def observer(layer: EvictingLayer):
            def observe(pattern, hook):
                # pattern: [batch, heads, q, kv]; kv matches the keys update() returned
                grouped = group_attention(pattern[0], layer.keys.shape[1], self.policy.per_head)
                self.policy.observe(layer, grouped)

            return observe

        return [
            (f"blocks.{layer.layer}.attn.hook_pattern", observer(layer)) for layer in self.layers
        ]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Masks are built as if held keys were the most recent positions. On a global layer
        # that is exact for any chunk (every held key is in the past of every new query). On
        # a sliding-window layer it is exact only while each head holds exactly the last n
        # positions; otherwise a multi-token chunk could see keys beyond its window, so such
        # chunks go one token at a time (exact, slower).
        for layer in self.layers:  # the chunk, however it is fed (compress-once reads it)
            layer.chunk = range(self.n_seen, self.n_seen + tokens.shape[1])
        if tokens.shape[1] == 1 or not any(self._scattered(l) for l in self.layers):
            return self._pass(tokens)
        for i in range(tokens.shape[1]):
            logits = self._pass(tokens[:, i : i + 1])
        return logits

    def _pass(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = super().forward(tokens)
        if self.policy.compress_once:
            self._align_sliding()
        return logits

    def _align_sliding(self) -> None:
        align_sliding(self.layers)

    @staticmethod
    def _scattered(layer: EvictingLayer) -> bool:
        return scattered(layer)

    def bytes_held(self) -> dict[str, int]:
        held = super().bytes_held()
        held["scores"] = tensor_bytes(*(t for l in self.layers for t in (l.scores, *l.recent_rows)))
        return held


@dataclass(frozen=True)
class EvictionPolicy(CachePolicy):
    budget: int

    needs_attention = True  # whether `observe` needs the attention pattern (a hook per layer)
    per_head = False  # one set per layer; H2O and SnapKV make this a setting (True)
    compress_once = False  # True: evict only after chunks of 2+ tokens (see the module doc)

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(
                f"budget must be an integer >= 1 (tokens of K/V kept), got {self.budget!r}"
            )
        if not isinstance(self.per_head, bool):
            raise ValueError(f"per_head must be True or False, got {self.per_head!r}")

    def runner(self, model: TransformerBridge):
        check_fits(model, "budget", self.budget)
        return _EvictionRunner(model, self)

    def observe(self, layer: EvictingLayer, attention: torch.Tensor) -> None:
        """Fold attention [S, q, kv] (float64, averaged per selection group) into
        layer.scores [S, n]."""

    def protected(self, layer: EvictingLayer) -> torch.Tensor:
        """Indices (into the held tokens) kept whatever their score: [m] for every group
        alike, or [S, m]; none by default."""
        return torch.zeros(0, dtype=torch.long, device=layer.keys.device)

    def scores(self, layer: EvictingLayer) -> torch.Tensor:
        """Scores of the held tokens, [S, n] (or [n] for every group alike); the highest
        unprotected ones are kept."""
        return layer.scores

    def keep(self, layer: EvictingLayer) -> torch.Tensor:
        """Indices [S, budget] (into the held tokens) of exactly `budget` tokens per group to
        keep: the protected ones, and the `budget - len(protected)` best-scored others (ties:
        the earlier)."""
        s = layer.n_groups
        protected = per_group(self.protected(layer), s)
        if protected.shape[-1] > self.budget:
            raise RuntimeError(
                f"{self.name}.protected returned {protected.shape[-1]} tokens for a "
                f"budget of {self.budget}"
            )
        # a key no query can see again (outside a sliding window) never competes
        scores = per_group(self.scores(layer), s).masked_fill(layer.out_of_window(), -torch.inf)
        chosen = top_indices(scores, self.budget - protected.shape[-1], protected)
        return torch.cat([chosen, protected], dim=-1)

    def held_tokens(self, seen: int, prompt: int | None = None) -> int:
        """Tokens whose K/V each KV head of a layer without a sliding window holds after a
        run that has seen `seen` tokens, the first `prompt` of them one prompt (default: all
        of them): the budget, or every token while fewer. memory.held_after reads it."""
        return min(seen, self.budget)

    def bytes_per_token(self, shape: Shape) -> dict[str, int]:
        return {}  # past the budget a token costs nothing: its K/V are dropped

    def step_flops(self, arch: Arch, context: int, prompt: int | None = None) -> float:
        # attention reads the keys held (the budget's) only, + the new token's own
        return forward_flops(arch, 1, self.held_tokens(context, prompt) + 1)
