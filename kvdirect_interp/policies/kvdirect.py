"""KV-Direct: a window of recent K/V, residual checkpoints for older tokens, K/V rebuilt.

The paper's method (arXiv 2603.19664): the `window` most recent tokens keep K and V; older
tokens keep a checkpoint, and their K/V are recomputed whenever attention needs them. What
the checkpoint is decides both the bytes and the compute:

- "every_layer": resid_pre at every layer (L x d_model per token). A layer's K/V are one
  norm + two projections (+ k-norm, rotary) away: `kv.rebuild_kv`.
- "first_layer": one residual vector per token (the block-0 input, d_model per token, the
  paper's "5 KB/token"). Layer l needs resid_pre[l], so every layer below must be run
  again for the evicted tokens: a re-prefill at every step.
- "token_ids": the same information as "first_layer" in 4 bytes per token (the embedding is
  deterministic): the same re-prefill.
- "min_bytes": per layer, whichever of resid_pre or K/V is smaller; K/V are kept where they
  are smaller (grouped-query layers), residuals rebuilt elsewhere. Still exact.

exact_shapes=True rebuilds each token with the GEMM shape of the forward pass that first
computed it (padding its rows into that many rows), so rebuilt K/V can be bitwise equal to
the cached ones; exact_shapes=False rebuilds all evicted tokens in one GEMM (faster, other
bits). Whether they are bitwise equal is measured by the tests and notebooks, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _plain
from ..kv import rebuild_kv
from .base import (CachePolicy, CacheRunner, PolicyLayer, check_fits, sliding_windows,
                   tensor_bytes)

MODES = ("every_layer", "first_layer", "token_ids", "min_bytes")


class _Segments:
    """Which forward pass computed each token: (start position, length) per pass."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def add(self, start: int, length: int) -> None:
        self.spans.append((start, length))

    def of(self, position: int) -> tuple[int, int]:
        for start, length in self.spans:
            if start <= position < start + length:
                return start, length
        raise KeyError(position)


class KVDirectLayer(PolicyLayer):
    """Held window K/V, plus either residual checkpoints (rebuilt here) or K/V replayed by
    the runner for the evicted tokens."""

    def __init__(self, layer: int, sliding_window: int | None, runner: "_KVDirectRunner",
                 keep_all_kv: bool) -> None:
        super().__init__(layer, sliding_window)
        self.runner = runner
        self.keep_all_kv = keep_all_kv  # min_bytes on a layer where K/V are the smaller
        self.window_resid = None  # [n_held, d_model]: kept to checkpoint tokens on eviction
        self.ck_resid = None  # [n_evicted, d_model]
        self.ck_pos = torch.zeros(0, dtype=torch.long)
        self.rebuilt_bytes = 0

    # ---- residual checkpoints (every_layer, min_bytes) ----
    def record_residual(self, resid: torch.Tensor) -> None:
        """resid_pre rows [q, d_model] of the tokens this forward pass processes."""
        if self.runner.mode in ("first_layer", "token_ids") or self.keep_all_kv:
            return
        rows = resid.detach().clone()
        self.window_resid = rows if self.window_resid is None else torch.cat(
            [self.window_resid, rows])

    def _rebuild(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """K (rotated) and V of the evicted tokens, [1, kv_heads, n, d_head], or None."""
        if self.runner.mode in ("first_layer", "token_ids"):
            return self.runner.replayed_kv(self.layer, self.ck_pos)
        if self.ck_resid is None or len(self.ck_pos) == 0:
            return None
        model = self.runner.model
        if not self.runner.policy.exact_shapes:
            kv = rebuild_kv(model, self.ck_resid[None], self.layer, positions=self.ck_pos)
            return kv.rot_k.transpose(1, 2), kv.v.transpose(1, 2)
        parts_k, parts_v = [], []
        pos = self.ck_pos.tolist()
        i = 0
        while i < len(pos):  # group consecutive tokens computed by the same forward pass
            start, length = self.runner.segments.of(pos[i])
            j = i
            while j < len(pos) and pos[j] < start + length:
                j += 1
            offsets = torch.tensor(pos[i:j]) - start
            padded = self.ck_resid.new_zeros(1, length, self.ck_resid.shape[-1])
            padded[0, offsets] = self.ck_resid[i:j]
            kv = rebuild_kv(model, padded, self.layer, positions=torch.arange(start, start + length))
            parts_k.append(kv.rot_k[:, offsets])
            parts_v.append(kv.v[:, offsets])
            i = j
        return torch.cat(parts_k, 1).transpose(1, 2), torch.cat(parts_v, 1).transpose(1, 2)

    def past_visible(self) -> int:
        return super().past_visible() + len(self.ck_pos)

    def update(self, key_states, value_states, *args, **kwargs):
        self.append(key_states, value_states)
        rebuilt = self._rebuild()
        if rebuilt is None:
            self.rebuilt_bytes = 0
            return self.keys, self.values
        k_old, v_old = rebuilt
        self.rebuilt_bytes = tensor_bytes(k_old, v_old)
        return torch.cat([k_old, self.keys], dim=-2), torch.cat([v_old, self.values], dim=-2)

    def keep_only(self, index: torch.Tensor) -> None:
        super().keep_only(index)
        if self.window_resid is not None:
            self.window_resid = self.window_resid[index]

    def after_forward(self) -> None:
        if self.sliding_window is not None:  # never attended again: no checkpoint needed
            visible = self.ck_pos > self.seen - self.sliding_window
            self.ck_pos = self.ck_pos[visible]
            if self.ck_resid is not None:
                self.ck_resid = self.ck_resid[visible]
        super().after_forward()  # drops held tokens a sliding layer cannot see any more
        n_held = self.keys.shape[-2]
        n_out = n_held - self.runner.policy.window
        if self.keep_all_kv or n_out <= 0:
            return
        self.ck_pos = torch.cat([self.ck_pos, self.positions[:n_out]])
        if self.window_resid is not None:
            rows = self.window_resid[:n_out]
            self.ck_resid = rows if self.ck_resid is None else torch.cat([self.ck_resid, rows])
        self.keep_only(torch.arange(n_out, n_held))


class _KVDirectRunner(CacheRunner):
    def __init__(self, model, policy: "KVDirect") -> None:
        self.policy = policy
        self.mode = policy.checkpoint
        self.segments = _Segments()
        self.token_ids: list[int] = []  # token_ids / first_layer replay input
        self.first_resid = None  # first_layer: block-0 residual of every token [n, d_model]
        self._replay_cache = None  # first_layer / token_ids: this step's re-prefill
        cfg = model.cfg
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        kv_smaller = 2 * n_kv * cfg.d_head <= cfg.d_model  # ties: keep K/V, no compute
        keep_all = policy.checkpoint == "min_bytes" and kv_smaller
        layers = [KVDirectLayer(l, w, self, keep_all) for l, w in enumerate(sliding_windows(model))]
        super().__init__(model, layers)

    # ---- hooks: residual checkpoints come from the forward pass itself ----
    def hooks(self):
        def recorder(layer: KVDirectLayer):
            def record(resid, hook):
                layer.record_residual(resid[0])
            return record

        # only where a residual is checkpointed: no hook at all lets the forward pass take
        # the unwrapped fast path (token_ids; min_bytes where K/V are smaller everywhere)
        hooks = [(f"blocks.{l.layer}.hook_resid_pre", recorder(l)) for l in self.layers
                 if self.mode in ("every_layer", "min_bytes") and not l.keep_all_kv]
        if self.mode == "first_layer":
            def keep_first(resid, hook):
                rows = resid[0].detach().clone()
                self.first_resid = rows if self.first_resid is None else torch.cat(
                    [self.first_resid, rows])
            hooks.append(("blocks.0.hook_resid_pre", keep_first))
        return hooks

    def before_forward(self, tokens: torch.Tensor) -> None:
        self.segments.add(self.n_seen, tokens.shape[1])
        self._replay_cache = None
        if self.mode in ("first_layer", "token_ids"):
            self._replay_evicted()
        self.token_ids += tokens[0].tolist()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = super().forward(tokens)
        self.last_transient = self._transient()
        self._replay_cache = None  # transient: freed after the step
        return logits

    # ---- the re-prefill of "first_layer" / "token_ids" ----
    def _replay_evicted(self) -> None:
        """Run the model again over the evicted tokens (every layer below is recomputed) and
        keep each layer's K/V for them, for this forward pass only."""
        n_evicted = max(0, self.n_seen - self.policy.window)
        if n_evicted == 0:
            return
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.original_model.config)
        ids = torch.tensor(self.token_ids)
        spans = self.segments.spans[:-1] if self.policy.exact_shapes else [(0, n_evicted)]
        for start, length in spans:
            if start >= n_evicted:
                break
            chunk = ids[start:start + length][None]
            # only the K/V are wanted: one row of logits (the unembedding is the costliest
            # matmul of a long replay)
            hooks = []  # token ids need none: the unwrapped path when nothing else hooks
            if self.mode == "first_layer":
                rows = self.first_resid[start:start + length][None]
                hooks = [("blocks.0.hook_resid_pre", lambda resid, hook, rows=rows: rows.clone())]
            _plain.logits(self.model, chunk, fwd_hooks=hooks, past_key_values=cache,
                          logits_to_keep=1)
        self._replay_cache = cache

    def replayed_kv(self, layer: int, positions: torch.Tensor):
        cache = self._replay_cache
        if cache is None or len(positions) == 0:
            return None
        keys, values = cache.layers[layer].keys, cache.layers[layer].values
        # a sliding layer's replay cache holds only its last window - 1 positions
        first = cache.layers[layer].get_seq_length() - keys.shape[-2]
        index = positions - first
        return keys[:, :, index], values[:, :, index]

    def bytes_held(self) -> dict[str, int]:
        held = super().bytes_held()
        resid = tensor_bytes(*(t for l in self.layers for t in (l.ck_resid, l.window_resid)))
        if self.mode == "first_layer":
            resid += tensor_bytes(self.first_resid)
        held["residual"] = resid
        if self.mode == "token_ids":
            held["token_ids"] = 4 * len(self.token_ids)
        return held

    def _transient(self) -> int:
        if self._replay_cache is not None:  # the re-prefill materialises every layer's K/V
            c = self._replay_cache
            return tensor_bytes(*(t for l in c.layers for t in (l.keys, l.values)))
        return max((l.rebuilt_bytes for l in self.layers), default=0)

    def bytes_transient(self) -> int:
        """every_layer / min_bytes: the largest rebuilt K/V handed to one layer's attention
        (the zero rows that pad an exact-shape rebuild are not counted); first_layer /
        token_ids: the K/V of every layer that the re-prefill materialised, including the
        window tokens of forward passes it had to repeat whole."""
        return getattr(self, "last_transient", 0)


@dataclass(frozen=True)
class KVDirect(CachePolicy):
    """The `window` most recent tokens keep K/V; older tokens keep a `checkpoint` (see the
    module docstring) and their K/V are rebuilt whenever attention needs them."""

    window: int
    checkpoint: str = "every_layer"
    exact_shapes: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer >= 1 (tokens keeping K/V), got "
                             f"{self.window!r}")
        if self.checkpoint not in MODES:
            raise ValueError(f"unknown checkpoint mode {self.checkpoint!r}; accepted: {list(MODES)}")

    def runner(self, model):
        check_fits(model, "window", self.window)
        return _KVDirectRunner(model, self)
