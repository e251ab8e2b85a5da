"""KV-Direct as the cache of transformers' own generate (see hf_cache.py): the layers of
kvdirect_rebuild.py and kvdirect_replay.py, driven around each pass of a plain HF model, their
evicted K/V recomputed by that model's own modules.

- every_layer / min_bytes (`HFRebuild`): residuals recorded by forward pre-hooks on the
  decoder layers (their input); evicted K/V recomputed by `LayerKV`, with the shapes of
  the passes that first computed them (a decoded token's 1-row GEMMs), so the bits are the
  cached ones.
- first_layer / token_ids (`HFReplay`): the evicted tokens replayed layer by layer through
  the HF decoder stack (`HFLayerStream`, kvdirect_stream's mechanism) or re-prefilled at
  once (replay="one_shot"), in the chunks of the passes that first computed them.

The recomputation is the family's own code (norm, projections, k-norm, rotary), so the
key-path differences for which `kv.rebuild_kv` refuses some families do not arise (tested
on the tiny families and SmolLM2 only). A model with layers that are not attention is
refused by name on entry (hf_attach.HFModel.check_attention_only); a decoder layer that
writes no K/V to its cache, when first asked (`LayerKV`). Unlike `kv.rebuild_kv`, the
recomputation also runs the layer's q projection (HF computes it before the cache update),
so it costs more than cost.rebuild_flops counts.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from ..sweep.tree import _PassThrough, _with_children
from .hf_attach import Driver, HFModel, Hook, hidden_input
from .kvdirect import KVDirect
from .kvdirect_rebuild import RebuildLayer
from .kvdirect_replay import ReplayLayer
from .kvdirect_stream import LayerStream, _Fed
from .kvdirect_window import Segments

# ---- KV-Direct: rebuilt from residuals by the HF layer's own modules


class _Captured(Exception):
    """Raised by `_CaptureLayer.update`: the layer's K/V are in, nothing after is needed."""


class _CaptureLayer(DynamicLayer):
    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values = key_states, value_states
        raise _Captured


class LayerKV:
    """K (rotated) and V of one decoder layer for given input rows, computed by HF's own
    code: the decoder stack (the base model) runs with that layer fed the rows and the
    others passing their input through (kvdirect_stream's view); the layer's attention
    hands its K/V to a capture cache, which stops the pass there (no attention, no MLP).
    The family's norm, projections, k-norm and rotary are the forward pass's own, so rows
    computed with the shapes of their first pass give its bits."""

    def __init__(self, hf: HFModel, driver: Driver) -> None:
        self.hf = hf
        self.driver = driver
        self._pass = [_PassThrough(m) for m in hf.layers]
        self._views: dict[int, tuple[torch.nn.Module, _Fed]] = {}

    def _view(self, l: int) -> tuple[torch.nn.Module, _Fed]:
        if l not in self._views:
            fed = _Fed(self.hf.layers[l])
            layers = [fed if i == l else p for i, p in enumerate(self._pass)]
            view = _with_children(self.hf.owner, **{self.hf.name: torch.nn.ModuleList(layers)})
            self._views[l] = (view, fed)
        return self._views[l]

    def kv(self, l: int, rows: torch.Tensor, positions, row_by_row: bool = False):
        """K, V [1, kv_heads, n, d_head] of layer l for its input rows [1, n, d_model] at
        `positions` [n]; row_by_row: one pass per row (a decoded token's 1-row GEMMs)."""
        positions = torch.as_tensor(positions, dtype=torch.long).to(self.hf.device)
        if not row_by_row or rows.shape[1] == 1:
            return self._kv(l, rows, positions)
        parts = [
            self._kv(l, rows[:, i : i + 1], positions[i : i + 1]) for i in range(rows.shape[1])
        ]
        return torch.cat([k for k, _ in parts], 2), torch.cat([v for _, v in parts], 2)

    def _kv(self, l: int, rows: torch.Tensor, positions: torch.Tensor):
        view, fed = self._view(l)
        capture = _CaptureLayer()
        fed.rows = rows
        was, self.driver.inner = self.driver.inner, True  # the fed layer's hooks: not a step's
        try:
            view(
                input_ids=torch.zeros_like(positions)[None],  # embedded, then replaced
                position_ids=positions[None],
                past_key_values=Cache(layers=[capture] * self.hf.n_layers),
                use_cache=True,
            )
        except _Captured:
            return capture.keys, capture.values
        finally:
            fed.rows = None
            self.driver.inner = was
        raise NotImplementedError(
            f"KV-Direct's rebuild cannot serve {self.hf.family}: decoder layer {l} wrote no "
            "keys and values to its cache"
        )


class _HFRebuildLayer(RebuildLayer):
    def rebuild(self, resid, positions, row_by_row=False):
        return self.runner.layer_kv.kv(self.layer, resid, positions, row_by_row)


class HFRebuild(Driver):
    """KV-Direct every_layer / min_bytes (`policy`, `segments` and `layer_kv` are what its
    layers read, as they read a KVDirectRunner's)."""

    def __init__(self, hf: HFModel, policy: KVDirect) -> None:
        hf.check_fits("window", policy.window)
        self.segments = Segments()
        self.policy = policy
        keep_all = policy.keeps_kv(*hf.kv_shape())
        self.layers = [_HFRebuildLayer(l, w, self, keep_all) for l, w in enumerate(hf.windows)]
        super().__init__(hf, policy, Cache(layers=self.layers))
        self.layer_kv = LayerKV(hf, self)

    def hooks(self) -> list[Hook]:
        return [
            (self.hf.layers[l.layer], "pre", self._recorder(l))
            for l in self.layers
            if not l.keep_all_kv
        ]

    def _recorder(self, layer: _HFRebuildLayer):
        device = self.hf.layer_device(layer.layer)

        def record(module, args, kwargs):
            if self.acting():
                layer.record_residual(hidden_input(args, kwargs)[0].to(device))

        return record

    def before(self, ids, q, kwargs):
        self.segments.add(self.n_seen, q)

    def after(self, q):
        for layer in self.layers:
            layer.after_forward()


# ---- KV-Direct: replayed from the block-0 input or the token ids


class HFLayerStream(LayerStream):
    """kvdirect_stream's streaming replay over a plain HF model's own decoder stack (the
    bridge's fast-path tree is not involved; LayerStream's __init__ is replaced)."""

    def __init__(self, hf: HFModel) -> None:
        self.hf = hf
        self.model = hf.model
        self.config = hf.config
        self.n_layers = hf.n_layers
        self.active = False
        self.peak = 0
        self._drop_tree()
        self._resolve()
        self.end()

    def _resolve(self) -> None:
        if self._stack is None:
            self._stack = (self.hf.owner, self.hf.name)
            self._pass = [_PassThrough(m) for m in self.hf.layers]

    def _device(self) -> torch.device:
        return self.hf.device


class HFReplay(Driver):
    """KV-Direct first_layer / token_ids: what ReplayRunner does around each pass, on HF
    modules (`policy`, `segments` and `replayed_kv` are what its layers read)."""

    def __init__(self, hf: HFModel, policy: KVDirect) -> None:
        hf.check_fits("window", policy.window)
        self.segments = Segments()
        self.policy = policy
        self.token_ids: list[int] = []  # every token seen: the replay's input
        self.first_resid = None  # first_layer: block-0 input of every token [n, d_model]
        self._replay_cache = None  # this pass's one-shot re-prefill, or None
        self.from_residual = policy.checkpoint == "first_layer"
        self.layers = [ReplayLayer(l, w, self) for l, w in enumerate(hf.windows)]
        super().__init__(hf, policy, Cache(layers=self.layers))
        self._stream = HFLayerStream(hf) if policy.replay == "streaming" else None

    def hooks(self) -> list[Hook]:
        return [(self.hf.layers[0], "pre", self._keep_first)] if self.from_residual else []

    def _keep_first(self, module, args, kwargs):
        if not self.acting() or (self._stream is not None and self._stream.active):
            return  # a replay's pass through block 0, not this step's tokens
        rows = hidden_input(args, kwargs)[0].detach().clone().to(self.hf.layer_device(0))
        self.first_resid = rows if self.first_resid is None else torch.cat([self.first_resid, rows])

    def before(self, ids, q, kwargs):
        if ids is None:
            raise ValueError(
                f"{self.policy.name} replays token ids: pass input_ids, not inputs_embeds"
            )
        self.segments.add(self.n_seen, q)
        self._replay_cache = None
        n_evicted = max(0, self.n_seen - self.policy.window)
        if self._stream is None:
            self._replay_evicted(n_evicted)
        elif n_evicted == 0:
            self._stream.clear()
        else:
            spans = self._spans(n_evicted)
            n_rows = sum(spans[-1])
            first = self.first_resid[:n_rows] if self.from_residual else None
            self._stream.begin(torch.tensor(self.token_ids[:n_rows]), first, spans)
        self.token_ids += ids[0].tolist()

    def after(self, q):
        for layer in self.layers:
            layer.after_forward()
        self._replay_cache = None  # transient: freed after the pass
        if self._stream is not None:
            self._stream.end()

    def _spans(self, n_evicted: int) -> list[tuple[int, int]]:
        """The chunks a replay runs: the passes that first computed the evicted tokens
        (exact_shapes), else one chunk (streaming: of at most STREAM_CHUNK rows)."""
        if self.policy.exact_shapes:
            return [(s, n) for s, n in self.segments.spans[:-1] if s < n_evicted]
        if self._stream is None:
            return [(0, n_evicted)]
        return [(s, min(STREAM_CHUNK, n_evicted - s)) for s in range(0, n_evicted, STREAM_CHUNK)]

    def _replay_evicted(self, n_evicted: int) -> None:
        """One-shot: run the model again over the evicted tokens into a DynamicCache."""
        if n_evicted == 0:
            return
        cache = DynamicCache(config=self.hf.config)
        ids = torch.tensor(self.token_ids, device=self.hf.device)
        for start, length in self._spans(n_evicted):
            handles = []
            if self.from_residual:  # block 0's input is the checkpoint, not the embedding
                rows = self.first_resid[None, start : start + length]
                handles.append(
                    self.hf.layers[0].register_forward_pre_hook(_replacer(rows), with_kwargs=True)
                )
            self.inner = True
            try:
                self.hf.model(
                    input_ids=ids[None, start : start + length],
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,  # only the K/V are wanted
                )
            finally:
                self.inner = False
                for handle in handles:
                    handle.remove()
        self._replay_cache = cache

    def replayed_kv(self, layer: int, positions: torch.Tensor):
        """K, V [1, kv_heads, len(positions), d_head] of this layer for the evicted
        `positions`, streamed or from this pass's re-prefill (None when none)."""
        if self._stream is not None:
            return self._stream.kv(layer, positions)
        cache = self._replay_cache
        if cache is None or len(positions) == 0:
            return None
        held = cache.layers[layer]
        # a sliding layer's replay cache holds only its last window - 1 positions
        index = positions - (held.get_seq_length() - held.keys.shape[-2])
        return held.keys[:, :, index], held.values[:, :, index]


STREAM_CHUNK = 64  # rows per layered pass of a streaming replay without exact shapes


def _replacer(rows: torch.Tensor):
    """A forward pre-hook (with kwargs) giving a decoder layer `rows` [1, q, d_model] as
    its input."""

    def replace(module, args, kwargs):
        new = rows.to(hidden_input(args, kwargs).device).clone()
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return replace
