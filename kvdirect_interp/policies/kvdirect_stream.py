"""KV-Direct's streaming replay (replay="streaming", the default of "first_layer" and
"token_ids"): the evicted tokens' K/V are rebuilt one layer at a time, inside the step's own
forward pass, so one layer's K/V are alive at a time instead of every layer's.

When the step's attention at layer l asks its cache for the evicted tokens' K/V, the stream
holds only their hidden state entering layer l (`h` [n_rows, d_model]). It runs decoder layer
l over them with HF's own forward of the module holding the decoder layers (the base model,
no LM head), every other decoder layer passing its input through (sweep/tree.py's trick;
shallow copies, the shared tree is never changed). The chunk's token ids and positions go
in, so HF builds rotary (per layer type), masks and the embedding itself; layer l's input is
replaced by the chunk's rows of h (at layer 0 of a token_ids replay, the embedding HF
computes is the input). The layer's output is written back over those rows (nothing after
its own pass needs a chunk's rows at layer l), so h becomes h_{l+1} in place. The K/V
accumulate across chunks in a cache layer of the kind HF gives layer l
(`DynamicCache(config)`'s, as in the one-shot replay), listed at every index of the chunk's
cache so that HF's mask builders, which ask the first layer of each attention type, read
layer l's state. The chunks are the forward passes that first computed the tokens
(exact_shapes=True), so the K/V are the cached ones bit for bit; one chunk otherwise.

The tree is the fast path's plain HF tree where there is one, else the bridge's own HF tree
(its blocks compute as the bridge does, e.g. GPT-2's split QKV); where neither can be run
layer by layer the runner refuses, naming replay="one_shot".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import Cache, DynamicCache

from ..fastpath import fast_path, unwrapped_name
from ..sweep.tree import _PassThrough, _with_children
from .base import tensor_bytes

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class _Fed(torch.nn.Module):
    """Decoder layer l in a layered view: runs the layer on `rows` [1, q, d_model] where set
    (else on what the model hands it) and keeps its output [1, q, d_model] in `out`."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.inner = layer
        if hasattr(layer, "attention_type"):  # read by some model forwards
            self.attention_type = layer.attention_type
        self.rows: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        if self.rows is not None:
            if args:
                args = (self.rows, *args[1:])
            else:
                kwargs["hidden_states"] = self.rows
        out = self.inner(*args, **kwargs)
        self.out = out[0] if isinstance(out, tuple) else out
        return out


def _decoder_stack(model: TransformerBridge, tree: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """(owner, name): the module of `tree` whose ModuleList child `name` holds the decoder
    layers, the HF modules the bridge's blocks wrap (under their HF names in `tree`)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise LookupError("the bridge has no stack of blocks")
    where: dict[int, str] = {}
    for name, module in model.original_model.named_modules(remove_duplicate=False):
        where.setdefault(id(module), unwrapped_name(name))
    paths = [where.get(id(getattr(block, "original_component", None))) for block in blocks]
    list_path = (paths[0] or "").rpartition(".")[0]
    if not list_path or paths != [f"{list_path}.{i}" for i in range(len(blocks))]:
        raise LookupError("the decoder layers are not one list of the HF tree")
    owner_path, _, name = list_path.rpartition(".")
    owner = tree.get_submodule(owner_path) if owner_path else tree
    layers = owner.get_submodule(name)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != len(blocks):
        raise LookupError(f"{list_path} of the tree is not its list of decoder layers")
    return owner, name


def layer_tree(model: TransformerBridge) -> tuple[torch.nn.Module, str]:
    """(owner, name) of the decoder layers the streaming replay runs (see `_decoder_stack`),
    in the fast path's plain HF tree where there is one, else in the bridge's own HF tree.
    Raises NotImplementedError, naming why and replay="one_shot", where neither can be run
    from one decoder layer."""
    fp = fast_path(model)
    fp.status()  # builds the plain tree (again, after the model's tensors changed)
    trees = [("the bridge's HF tree", model.original_model)]
    why = []
    if fp.plain is None:
        why.append(f"no plain HF tree ({fp.unavailable})")
    else:
        trees.insert(0, ("the plain HF tree", fp.plain))
    for label, tree in trees:
        try:
            return _decoder_stack(model, tree)
        except (LookupError, AttributeError) as err:
            why.append(f"{label}: {err}")
    raise NotImplementedError(
        f"the streaming replay cannot run {model.cfg.model_name}'s decoder layers one at a "
        f"time ({'; '.join(why)}). Use KVDirect(..., replay='one_shot') (every layer's K/V "
        "replayed at once)"
    )


class LayerStream:
    """One runner's streaming replay: `begin` before each forward pass, `kv(l, positions)`
    from layer l's cache update (layers in order, each once per pass), `end` after it.

    `peak` is the largest number of bytes of the replay's own tensors alive at once during
    the last pass: h, the current layer's K/V and a chunk's output (plus a gathered copy of
    the K/V where the positions asked for are not contiguous)."""

    def __init__(self, model: TransformerBridge) -> None:
        self.model = model
        self.config = model.original_model.config
        self.n_layers = model.cfg.n_layers
        self.active = False  # True while a layered pass runs: the runner's hooks ignore it
        self.peak = 0
        self._drop_tree()
        self._resolve()  # refuse by name at once, before any work
        self.end()

    # ---- the tree and its per-layer views (rebuilt when the tree changes; never pickled)
    def _drop_tree(self) -> None:
        self._stack: tuple[torch.nn.Module, str] | None = None  # (owner, name), layer_tree's
        self._plain: torch.nn.Module | None = None  # the fast path's tree it was chosen for
        self._views: dict[int, tuple[torch.nn.Module, _Fed]] = {}

    def _resolve(self) -> None:
        fp = fast_path(self.model)
        fp.status()  # rebuilds the plain tree after the model's tensors changed
        if self._stack is not None and self._plain is fp.plain:
            return
        owner, name = layer_tree(self.model)
        self._drop_tree()
        self._plain, self._stack = fp.plain, (owner, name)
        self._pass = [_PassThrough(m) for m in owner.get_submodule(name)]

    def _view(self, l: int) -> tuple[torch.nn.Module, _Fed]:
        """The decoder stack (the base model, no LM head) with layer l fed, the others
        passing their input through."""
        if l not in self._views:
            owner, name = self._stack
            fed = _Fed(owner.get_submodule(name)[l])
            layers = [fed if i == l else p for i, p in enumerate(self._pass)]
            view = _with_children(owner, **{name: torch.nn.ModuleList(layers)})
            self._views[l] = (view, fed)
        return self._views[l]

    def __getstate__(self) -> dict:
        # a snapshot holds state, not modules: the tree and views are rebuilt on first use
        state = dict(vars(self))
        for key in ("_plain", "_stack", "_pass", "_views"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._drop_tree()

    # ---- one forward pass
    def begin(
        self, ids: torch.Tensor, first: torch.Tensor | None, spans: list[tuple[int, int]]
    ) -> None:
        """Start a pass replaying tokens ids [n_rows] in chunks `spans` ((start, length),
        covering 0..n_rows); `first` [n_rows, d_model] is their block-0 input (None: the
        embedding of the ids, computed by the model)."""
        self._resolve()
        device = self._device()
        self.ids = ids.to(device)
        self.positions = torch.arange(len(ids), device=device)
        self.h = None if first is None else first.to(device, copy=True)
        self.spans = spans
        self.next_layer = 0
        self._fresh = list(DynamicCache(config=self.config).layers)  # HF's kind per layer
        self.peak = tensor_bytes(self.h)

    def _device(self) -> torch.device:
        """Where the replay's token ids, positions and hidden state start (the embedding's)."""
        return self.model.cfg.device

    def clear(self) -> None:
        """A pass with nothing to replay: nothing held, peak 0."""
        self.end()
        self.peak = 0

    def end(self) -> None:
        """Free what the pass held (`peak` stays readable)."""
        self.ids = self.positions = self.h = self._fresh = None
        self.spans = []
        self.next_layer = 0

    def kv(self, layer: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """K (rotated) and V [1, kv_heads, len(positions), d_head] of `layer` for the evicted
        `positions` (ascending), after running the layers up to it; None if there are none."""
        if self.ids is None or len(positions) == 0:
            return None  # a later layer that needs K/V runs this one then
        if layer < self.next_layer:
            raise RuntimeError(
                f"layer {layer}'s evicted K/V were asked for after layer {self.next_layer - 1}"
                "'s: the streaming replay runs each layer once per forward pass, in order; "
                "use KVDirect(..., replay='one_shot')"
            )
        while self.next_layer <= layer:
            cached = self._run(self.next_layer)
            self.next_layer += 1
        if self.next_layer == self.n_layers:
            self.h = None  # no layer above needs it
        keys, values = cached.keys, cached.values
        # a sliding layer's cache holds only its last window - 1 positions
        index = positions - (cached.get_seq_length() - keys.shape[-2])
        lo, hi = int(index[0]), int(index[-1]) + 1
        if hi - lo == len(index):  # contiguous, as evicted tokens are: a view, no copy
            return keys[:, :, lo:hi], values[:, :, lo:hi]
        k, v = keys[:, :, index], values[:, :, index]
        held = tensor_bytes(self.h, keys, values, k, v)
        self.peak = max(self.peak, held)
        return k, v

    def _run(self, l: int):
        """Run decoder layer l over every chunk: h becomes h_{l+1}; returns the layer's cache
        (a DynamicLayer or DynamicSlidingWindowLayer holding its K/V for the tokens)."""
        view, fed = self._view(l)
        cached, self._fresh[l] = self._fresh[l], None
        cache = Cache(layers=[cached] * self.n_layers)  # every index reads layer l's state
        given = self.h is not None  # else (token_ids, layer 0) the model's embedding goes in
        for start, length in self.spans:
            rows = slice(start, start + length)
            fed.rows = self.h[rows][None] if given else None
            self.active = True
            try:
                view(
                    input_ids=self.ids[None, rows],
                    position_ids=self.positions[None, rows],
                    past_key_values=cache,
                    use_cache=True,
                )
            finally:
                self.active = False
                fed.rows = None
            out, fed.out = fed.out[0], None  # [length, d_model]
            if self.h is None:
                self.h = out.new_empty(len(self.ids), out.shape[-1])
            self.peak = max(self.peak, tensor_bytes(self.h, cached.keys, cached.values, out))
            self.h[rows] = out
            del out
        return cached
