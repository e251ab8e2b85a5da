"""Every cache policy as the cache of transformers' own `generate`, on a plain Hugging Face
causal LM (no bridge), as kvpress's presses plug into it:

    with KVDirect(64).attach(hf_model) as cache:
        out = hf_model.generate(ids, past_key_values=cache, max_new_tokens=50)

`attach` (CachePolicy.attach) makes a driver (hf_attach.Driver) holding one generation's
state and the Cache it yields; its hooks are on the HF modules for the `with` block only.
The same cache may serve several generate calls in the block (a chat: each call continues
from the tokens seen). What each policy hands generate:

- FullKV: transformers' DynamicCache; no hooks; batches served.
- NoCache: layers that hold nothing between passes; before each pass the whole sequence is
  fed instead of the new tokens (the package's NoCache: one full forward per step);
  batches served.
- the eviction baselines: evict.EvictingLayer per layer, scored from eager attention
  weights (forward hooks on the attention modules); after each pass each layer evicts.
- KVDirect: hf_kvdirect.py (kvdirect_rebuild's and kvdirect_replay's layers, their K/V
  recomputed by the HF model's own modules).

Positions and masks: every layer reports every token seen as its length (base.PolicyLayer),
so generate's positions are right; masks are built for the K/V `update` returns. Batches
of more than one row (and padding) are refused by every policy but FullKV and NoCache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, DynamicCache

from .base import CachePolicy, PolicyLayer
from .evict import EvictingLayer, EvictionPolicy, align_sliding, group_attention, scattered
from .full import FullKV
from .hf_attach import Driver, HFModel, Hook
from .hf_kvdirect import HFRebuild, HFReplay
from .kvdirect import KVDirect
from .no_cache import NoCache


@contextmanager
def attach(policy: CachePolicy, model) -> Iterator[Cache]:
    """`policy` as the cache of `model.generate` (see the module docstring)."""
    driver = driver_for(policy, HFModel(model))
    with driver.registered() as cache:
        yield cache


def driver_for(policy: CachePolicy, hf: HFModel) -> Driver:
    """A fresh driver of `policy` on `hf`; refuses, by name, what it cannot serve."""
    if isinstance(policy, FullKV):
        return _Full(hf, policy)
    hf.check_attention_only(policy)
    if isinstance(policy, NoCache):
        return _NoCache(hf, policy)
    if isinstance(policy, EvictionPolicy):
        return _Evicting(hf, policy)
    if isinstance(policy, KVDirect):
        return (HFReplay if policy.replays else HFRebuild)(hf, policy)
    raise TypeError(
        f"attach knows no HF driver for {type(policy).__name__}; accepted: FullKV, NoCache, "
        "KVDirect and the eviction baselines (EvictionPolicy)"
    )


class _Full(Driver):
    batches = True

    def __init__(self, hf: HFModel, policy: FullKV) -> None:
        super().__init__(hf, policy, DynamicCache(config=hf.config))


# ---- NoCache: the whole sequence every pass


class _EmptyAfterPass(PolicyLayer):
    """Holds K/V during a pass only (keeps `seen`, for generate's positions)."""

    def after_forward(self) -> None:
        self.keep_only(torch.zeros(0, dtype=torch.long, device=self.positions.device))


class _NoCache(Driver):
    batches = True  # every row's whole sequence, with generate's padding mask

    def __init__(self, hf: HFModel, policy: NoCache) -> None:
        self.layers = [_EmptyAfterPass(l, w) for l, w in enumerate(hf.windows)]
        super().__init__(hf, policy, Cache(layers=self.layers))
        self.token_ids: torch.Tensor | None = None  # [1, n_seen]

    def before(self, ids, q, kwargs):
        if ids is None:
            raise ValueError("NoCache re-runs the token ids: pass input_ids, not inputs_embeds")
        self.token_ids = ids if self.token_ids is None else torch.cat([self.token_ids, ids], 1)
        for layer in self.layers:
            layer.seen = 0  # the pass feeds every token from position 0
        kwargs = {k: v for k, v in kwargs.items() if k not in ("position_ids", "cache_position")}
        kwargs["input_ids"] = self.token_ids
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:  # left padding: positions count real tokens
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return kwargs

    def after(self, q):
        for layer in self.layers:
            layer.after_forward()


# ---- the eviction baselines


class _Evicting(Driver):
    def __init__(self, hf: HFModel, policy: EvictionPolicy) -> None:
        hf.check_fits("budget", policy.budget)
        if policy.needs_attention:
            hf.check_eager(policy)
        self.layers = [EvictingLayer(l, policy, w) for l, w in enumerate(hf.windows)]
        super().__init__(hf, policy, Cache(layers=self.layers))

    def hooks(self) -> list[Hook]:
        if not self.policy.needs_attention:
            return []
        return [(self.hf.attention(l.layer), "post", self._observer(l)) for l in self.layers]

    def _observer(self, layer: EvictingLayer):
        def observe(module, args, output):
            # a compress-once policy reads no attention on a decode step (as its runner)
            if not self.acting() or (self.policy.compress_once and len(layer.chunk) == 1):
                return
            pattern = output[1]  # [batch, heads, q, kv], eager attention's weights
            if pattern is None:
                raise RuntimeError(
                    f"layer {layer.layer}: the attention module returned no weights; "
                    f"{self.policy.name} needs eager attention"
                )
            grouped = group_attention(pattern[0], layer.keys.shape[1], self.policy.per_head)
            self.policy.observe(layer, grouped)

        return observe

    def before(self, ids, q, kwargs):
        # the package's runner feeds such a chunk one token at a time; generate cannot
        if q > 1 and any(scattered(l) for l in self.layers):
            raise ValueError(
                f"{self.policy.name}: a chunk of {q} tokens after evictions on a "
                "sliding-window layer would see keys outside its window (masks assume the "
                "held keys are the most recent); feed it one token at a time"
            )
        for layer in self.layers:
            layer.chunk = range(self.n_seen, self.n_seen + q)

    def after(self, q):
        for layer in self.layers:
            layer.after_forward()
        if self.policy.compress_once:
            align_sliding(self.layers)
