"""KV-Direct's replay mechanism ("first_layer", "token_ids"): evicted tokens keep only what
enters block 0 (their block-0 residual, or their token ids: the embedding is deterministic),
so at every forward pass the model is run again over them and each layer's attention gets
their K/V from that replay. Two ways (KVDirect.replay):

- "streaming" (the default): layer by layer inside the step's own forward pass, one layer's
  K/V and the evicted tokens' hidden state alive at a time (kvdirect_stream.py);
- "one_shot": before the pass, a re-prefill of every layer into a DynamicCache, whose K/V of
  every layer are alive during the whole pass.

With exact_shapes=True the evicted tokens are replayed in the same chunks (forward-pass
segments) that first computed them, so their K/V are the cached ones bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import DynamicCache

from ..hooks import forward as model_forward  # the one entry point: hooks.forward
from ..memory import TOKEN_ID_BYTES, sliding_windows
from .base import tensor_bytes
from .kvdirect_stream import LayerStream
from .kvdirect_window import KVDirectRunner, WindowLayer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from .kvdirect import KVDirect


STREAM_CHUNK = 64  # rows per layered pass of a streaming replay without exact shapes


class ReplayLayer(WindowLayer):
    def evicted_kv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.runner.replayed_kv(self.layer, self.ck_pos)


class ReplayRunner(KVDirectRunner):
    def __init__(self, model: TransformerBridge, policy: KVDirect) -> None:
        self.token_ids: list[int] = []  # every token seen: the replay's input
        self.first_resid = None  # first_layer: block-0 residual of every token [n, d_model]
        self._replay_cache = None  # this pass's re-prefill (a DynamicCache), or None
        layers = [ReplayLayer(l, w, self) for l, w in enumerate(sliding_windows(model))]
        super().__init__(model, policy, layers)
        self.from_residual = policy.checkpoint == "first_layer"
        # streaming: refuses by name here, before any work, where layers cannot run alone
        self._stream = LayerStream(model) if policy.replay == "streaming" else None

    def hooks(self):
        if not self.from_residual:
            return []  # token ids need no hook: the unwrapped fast path when nothing else hooks

        def keep_first(resid, hook):
            if self._stream is not None and self._stream.active:
                return  # a layered replay pass through block 0, not this step's tokens
            rows = resid[0].detach().clone()
            self.first_resid = (
                rows if self.first_resid is None else torch.cat([self.first_resid, rows])
            )

        return [("blocks.0.hook_resid_pre", keep_first)]

    def before_forward(self, tokens: torch.Tensor) -> None:
        super().before_forward(tokens)
        self._replay_cache = None
        if self._stream is not None:
            self._stream_evicted()
        else:
            self._replay_evicted()
        self.token_ids += tokens[0].tolist()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = super().forward(tokens)
        self._replay_cache = None  # transient: freed after the step
        if self._stream is not None:
            self._stream.end()
        return logits

    def _replay_spans(self, n_evicted: int) -> list[tuple[int, int]]:
        """(start, length) of the chunks a replay runs, covering the evicted tokens: the
        forward passes that first computed them (whole), or one chunk (exact_shapes=False)."""
        if not self.policy.exact_shapes:
            return [(0, n_evicted)]
        return [(s, n) for s, n in self.segments.spans[:-1] if s < n_evicted]

    def _stream_evicted(self) -> None:
        """Set up this pass's streaming replay (the layers run from their cache updates)."""
        n_evicted = max(0, self.n_seen - self.policy.window)
        if n_evicted == 0:
            self._stream.clear()
            return
        spans = self._replay_spans(n_evicted)
        n_rows = sum(spans[-1])
        if not self.policy.exact_shapes:
            # any chunking gives other bits anyway: chunks of STREAM_CHUNK rows keep a layer's
            # output for one chunk alive beside h, not a second copy of h
            spans = [(s, min(STREAM_CHUNK, n_rows - s)) for s in range(0, n_rows, STREAM_CHUNK)]
        first = self.first_resid[:n_rows] if self.from_residual else None
        self._stream.begin(torch.tensor(self.token_ids[:n_rows]), first, spans)

    def _replay_evicted(self) -> None:
        """Run the model again over the evicted tokens (every layer below is recomputed) and
        keep each layer's K/V for them, for this forward pass only."""
        n_evicted = max(0, self.n_seen - self.policy.window)
        if n_evicted == 0:
            return
        cache = DynamicCache(config=self.model.original_model.config)
        ids = torch.tensor(self.token_ids, device=self.model.cfg.device)
        for start, length in self._replay_spans(n_evicted):
            chunk = ids[start : start + length][None]
            # only the K/V are wanted: one row of logits (the unembedding is the costliest
            # matmul of a long replay)
            hooks = []
            if self.from_residual:
                rows = self.first_resid[start : start + length][None]
                hooks = [("blocks.0.hook_resid_pre", lambda resid, hook, rows=rows: rows.clone())]
            model_forward(self.model, chunk, hooks=hooks, past_key_values=cache, logits_to_keep=1)
        self._replay_cache = cache

    def replayed_kv(self, layer: int, positions: torch.Tensor):
        """K, V [1, kv_heads, len(positions), d_head] of this layer for the evicted
        `positions`, streamed or from this pass's re-prefill (None when nothing was replayed)."""
        if self._stream is not None:
            return self._stream.kv(layer, positions)
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
        held["residual"] = tensor_bytes(self.first_resid) if self.from_residual else 0
        if not self.from_residual:
            held["token_ids"] = TOKEN_ID_BYTES * len(self.token_ids)
        return held

    def transient(self) -> int:
        if self._stream is not None:
            return self._stream.peak
        if self._replay_cache is not None:  # the re-prefill materialises every layer's K/V
            c = self._replay_cache
            return tensor_bytes(*(t for l in c.layers for t in (l.keys, l.values)))
        return super().transient()

    def bytes_transient(self) -> int:
        """Bytes of the replay's tensors alive at once in the last forward pass, counted from
        the tensors. Streaming: the largest, over layers, of the evicted tokens' hidden state
        + that layer's replayed K/V + a chunk's output. One-shot: the K/V of every layer
        that the re-prefill materialised. Both include the window tokens of forward passes
        replayed whole."""
        return super().bytes_transient()
