"""The fast path: one object per model that runs a forward pass through an unwrapped HF
module tree over the bridge's own tensors, and says whether it does and why not.

TransformerBridge wraps every HF submodule in a component with hook points; with nothing
hooked those wrappers still cost ~360 Python calls per decode step (~50 ms on SmolLM2 on
this 2-core machine, a third of a step). The same computation can run through a plain HF
model whose parameters and buffers *are* the bridge's tensors (shared, not copied): HF's
own forward, the same kernels, the same cache objects.

`FastPath(model)` builds that tree and probes it once: its logits must equal the bridge's
bitwise (batch 2 uncached, a cached prefill + step), and the two hook points the cache
policies use (resid_pre, the attention pattern; see `_hook_points`) must hand their hooks
the bridge's tensors. `forward` then picks, per call:

- "bridge" when asked to, when the probe failed, when any hook is attached anywhere in the
  bridge or globally, when a TransformerLens cfg flag adds hook points, or when a hook
  names a hook point the plain tree does not have;
- "fast" otherwise. `path="fast"` insists and raises, naming the reason, where it cannot.

`status()` and `last` say which path ran and why. The tree is rebuilt and re-probed when
the model's parameters or buffers change (identity, storage or dtype: `model.to(dtype)`,
`model.to(device)`, `load_state_dict(assign=True)`); replacing a whole submodule is not
tracked (call `fast_path(model).reset()`).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from . import _hook_points

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Path = Literal["auto", "bridge", "fast"]
PATHS = ("auto", "bridge", "fast")
_WRAPPED = re.compile(r"(^|\.)_original_component(?=\.|$)")
# cfg flags that make the bridge compute extra hook points (split q/k/v inputs, per-head
# results, ...): with any of them on, only the bridge is the requested computation
_HOOK_FLAGS = (
    "use_attn_result",
    "use_split_qkv_input",
    "use_hook_mlp_in",
    "use_attn_in",
    "use_hook_tokens",
)


def unwrapped_name(name: str) -> str:
    """'model.layers.0._original_component.self_attn._original_component.q_proj...' ->
    'model.layers.0.self_attn.q_proj...' (the HF name of a bridge-held tensor)."""
    return _WRAPPED.sub("", name).lstrip(".")


def build_plain(bridge: TransformerBridge) -> torch.nn.Module:
    """A plain HF model of the bridge's class whose tensors are the bridge's (shared)."""
    hf = bridge.original_model
    tensors = {}
    for name, t in [
        *hf.named_parameters(remove_duplicate=False),
        *hf.named_buffers(remove_duplicate=False),
    ]:
        tensors.setdefault(unwrapped_name(name), t)
    with torch.device("meta"):
        plain = type(hf)(hf.config)
    for name, _ in [
        *plain.named_parameters(remove_duplicate=False),
        *plain.named_buffers(remove_duplicate=False),
    ]:
        if name not in tensors:
            raise LookupError(f"no bridge tensor for the HF tensor {name!r}")
        owner, _, leaf = name.rpartition(".")
        module = plain.get_submodule(owner)
        if leaf in module._parameters:
            module._parameters[leaf] = tensors[name]  # the same Parameter object: shared
        else:
            module._buffers[leaf] = tensors[name]
    # rotary modules keep a non-buffer copy of inv_freq for dynamic rope; it was made on meta
    for module in plain.modules():
        if "original_inv_freq" not in module._buffers and isinstance(
            getattr(module, "original_inv_freq", None), torch.Tensor
        ):
            module.original_inv_freq = module.inv_freq
    plain.generation_config = hf.generation_config
    return plain.eval()


def logits_equal(bridge: TransformerBridge, plain: torch.nn.Module) -> bool:
    """Whether `plain` reproduces the bridge's logits bitwise: batch 2 uncached, and a
    cached prefill + one step. Some bridges (GPT-2's split fused QKV) compute otherwise."""
    from transformers import DynamicCache

    tokens = torch.arange(12, device=bridge.cfg.device).reshape(2, 6) % bridge.cfg.d_vocab
    config = bridge.original_model.config
    ours, theirs = DynamicCache(config=config), DynamicCache(config=config)
    with torch.no_grad():
        checks = [
            (bridge(tokens), plain(input_ids=tokens).logits),
            (
                bridge(tokens[:1], past_key_values=ours),
                plain(input_ids=tokens[:1], past_key_values=theirs, use_cache=True).logits,
            ),
            (
                bridge(tokens[:1, :1], past_key_values=ours),
                plain(input_ids=tokens[:1, :1], past_key_values=theirs, use_cache=True).logits,
            ),
        ]
    return all(torch.equal(a, b) for a, b in checks)


@dataclass(frozen=True)
class Choice:
    """Which path a forward pass took, and why."""

    path: Literal["bridge", "fast"]
    reason: str


def _output_recorder(fn) -> bool:
    """Whether a forward hook is transformers' output recorder (installed on the HF modules
    the first time a forward pass asks for hidden states or attentions, e.g. by TL's
    run_with_cache): it returns None, so it never changes an output, and it records only
    while a collector of that library is active, which neither path here opens."""
    return (
        getattr(fn, "__module__", "") == "transformers.utils.output_capturing"
        and getattr(fn, "__name__", "") == "output_capturing_hook"
    )


class FastPath:
    """The fast path of one model: built and probed lazily, rebuilt when tensors change."""

    def __init__(self, model: TransformerBridge) -> None:
        self._model = weakref.ref(model)
        self.last: Choice | None = None  # the latest forward pass's path
        self.reset()

    def reset(self) -> None:
        """Forget the built tree and probes (the next forward builds them again)."""
        self._key = None
        self.plain: torch.nn.Module | None = None
        self.unavailable: str | None = None  # why the fast path cannot run at all
        self._points_ok: bool | None = None  # hook-point probe, run when first needed
        self._points_map = None
        model = self._model()
        # the module tree is fixed once booted: its tensors and hook dicts are listed once
        slots = [
            (m._parameters if n in m._parameters else m._buffers, n)
            for m in model.original_model.modules()
            for n in [*m._parameters, *m._buffers]
            if (m._parameters.get(n) if n in m._parameters else m._buffers.get(n)) is not None
        ]
        self._slot_dicts = [d for d, _ in slots]
        self._slot_names = [n for _, n in slots]
        self._modules = list(model.modules())
        self._observers: list[tuple[dict, int]] = []
        self._owners = [m for m in self._modules if hasattr(m, "_capture_hook_handles")]
        self._hook_dicts = [
            d
            for m in self._modules
            for d in (
                m._forward_hooks,
                m._forward_pre_hooks,
                m._backward_hooks,
                m._backward_pre_hooks,
            )
        ]

    @property
    def model(self) -> TransformerBridge:
        model = self._model()
        if model is None:
            raise ReferenceError("the model of this fast path was deleted")
        return model

    # ---- building, and rebuilding when the model's tensors change ----
    def _tensor_key(self) -> tuple:
        # each tensor's identity and storage (a new dtype or device is a new storage); in
        # C-level maps, ~0.1 ms for SmolLM2's ~500 tensors: cheap enough for every forward
        try:
            tensors = list(map(dict.__getitem__, self._slot_dicts, self._slot_names))
            return (*map(id, tensors), *map(torch.Tensor.data_ptr, tensors))
        except (KeyError, TypeError):  # a tensor removed or set to None: rebuild
            return ()

    def _ensure_built(self) -> None:
        key = self._tensor_key()
        if key == self._key:
            return
        self.plain, self.unavailable, self._points_ok, self._points_map = None, None, None, None
        model = self.model
        try:
            plain = build_plain(model)
        except LookupError as err:  # a layout whose tensors this mapping cannot find
            self.unavailable = f"the HF tree's tensors cannot be mapped ({err})"
        else:
            if logits_equal(model, plain):
                self.plain = plain
            else:
                self.unavailable = (
                    "the plain HF tree's logits differ from the bridge's (probed bitwise)"
                )
        self._key = key

    # ---- deciding the path ----
    def _user_hooks(self) -> str | None:
        """Why the bridge must run because something is hooked, or None."""
        from torch.nn.modules import module as nn_module

        if (
            nn_module._global_forward_hooks
            or nn_module._global_forward_pre_hooks
            or nn_module._global_backward_hooks
        ):
            return "a global module hook is registered"
        model = self.model
        flags = [f for f in _HOOK_FLAGS if getattr(model.cfg, f, False)]
        if flags:
            return f"cfg flags add hook points: {flags}"
        # the pre-hooks the bridge's blocks put on their own norms to feed their hook points
        # (wired on the first bridge forward) change nothing while those hook points are
        # empty: they do not count. Sound and cheap (~0.1 ms, C-level): if every registered
        # hook is one of those handles, still present, nothing else is hooked.
        own = [h for m in self._owners for h in m._capture_hook_handles]
        seen = self._observers  # (hook dict, id) of transformers' output recorders
        if sum(map(len, self._hook_dicts)) == len(own) + len(seen) and all(
            h.id in (h.hooks_dict_ref() or ()) for h in own
        ):
            if all(i in d for d, i in seen):
                return None
        ids = {h.id for h in own}
        observers = []
        for m in self._modules:
            if m._backward_hooks or m._backward_pre_hooks or set(m._forward_pre_hooks) - ids:
                return f"a hook is attached to {type(m).__name__}"
            for i, fn in m._forward_hooks.items():
                if i in ids:
                    continue
                if not _output_recorder(fn):
                    return f"a hook is attached to {type(m).__name__}"
                observers.append((m._forward_hooks, i))
        self._observers = observers
        return None

    def choose(self, fwd_hooks: Sequence = (), path: Path = "auto") -> tuple[Choice, list | None]:
        """The path for a forward pass with `fwd_hooks`, and the plain-tree hook points."""
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; accepted: {list(PATHS)}")
        if path == "bridge":
            return Choice("bridge", "asked for the bridge (path='bridge')"), None
        self._ensure_built()
        reason = self.unavailable or self._user_hooks()
        points = None
        if reason is None:
            points = self._translate(list(fwd_hooks))
            if points is None:
                names = sorted({n for n, _ in fwd_hooks})
                reason = (
                    f"hook points without a probed plain-tree counterpart: {names[:4]}"
                    if self._points_ok
                    else "the hook-point probe failed"
                )
        if reason is not None:
            if path == "fast":
                raise RuntimeError(f"the fast path cannot run this forward pass: {reason}")
            return Choice("bridge", reason), None
        return Choice("fast", "nothing else hooked; probed bitwise equal to the bridge"), points

    def _translate(self, fwd_hooks: list) -> list | None:
        if not fwd_hooks:
            return []
        if self._points_ok is None:
            try:
                self._points_map = _hook_points.hook_map(self.model, self._counterpart)
                self._points_ok = _hook_points.probe(self.model, self.plain, self._points_map)
            except (LookupError, KeyError, IndexError, TypeError, RuntimeError):
                self._points_ok = False  # a layout or output this mapping does not know
        if not self._points_ok:
            return None
        return _hook_points.points(self._points_map, fwd_hooks)

    def _counterpart(self, component: torch.nn.Module) -> torch.nn.Module:
        """The plain tree's module for a bridge component (the HF module it wraps)."""
        target = component.original_component
        for name, module in self.model.original_model.named_modules(remove_duplicate=False):
            if module is target:
                return self.plain.get_submodule(unwrapped_name(name))
        raise LookupError(f"{type(target).__name__} is not in the bridge's HF tree")

    # ---- running ----
    def forward(
        self,
        tokens: torch.Tensor,
        *,
        fwd_hooks: Sequence[tuple[str, Callable]] = (),
        path: Path = "auto",
        **kwargs,
    ) -> torch.Tensor:
        """Logits [batch, pos, d_vocab] for `tokens` [batch, pos], with `fwd_hooks` ((name,
        fn) pairs, TransformerLens style) attached for this call only."""
        choice, points = self.choose(fwd_hooks, path)
        self.last = choice
        model = self.model
        if choice.path == "bridge":
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                return model(tokens, **kwargs)
        with _hook_points.attached(points):
            return self.plain(
                input_ids=tokens, use_cache="past_key_values" in kwargs, **kwargs
            ).logits

    def status(self) -> dict:
        """Whether the fast path is available for this model (nothing hooked), why not,
        and which path the latest forward pass took."""
        self._ensure_built()
        reason = self.unavailable or self._user_hooks()
        return {
            "fast_path": reason is None,
            "reason": reason or "available",
            "last_path": self.last.path if self.last else None,
            "last_reason": self.last.reason if self.last else None,
        }

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"FastPath({'in use' if s['fast_path'] else 'not in use'}: {s['reason']}; "
            f"last forward: {s['last_path']})"
        )


_PATHS: weakref.WeakKeyDictionary[torch.nn.Module, FastPath] = weakref.WeakKeyDictionary()


def fast_path(model: TransformerBridge) -> FastPath:
    """The model's FastPath (one per model, kept as long as the model lives)."""
    found = _PATHS.get(model)
    if found is None:
        found = _PATHS[model] = FastPath(model)
    return found
