"""The no-hooks fast path: a plain HF module tree over the bridge's own weight tensors.

TransformerBridge wraps every HF submodule in a component with hook points; with nothing
hooked those wrappers still cost ~360 Python calls per decode step (~50 ms on SmolLM2 on
this 2-core machine, a third of a step). When no hook is attached anywhere in the bridge,
the same computation can run through an unwrapped HF model whose parameters and buffers
*are* the bridge's tensors (shared, not copied): HF's own forward, the same kernels, the
same cache objects. Tests check the logits are bitwise equal to the bridge's, cached and
uncached, on every tiny family and the packaged models. Any hook (a user's `model.hooks()`,
a perma-hook) sends the forward pass through the bridge instead. A policy's own hooks on
resid_pre and the attention pattern run on the plain tree's modules (`_hook_points`).
"""

from __future__ import annotations

import re
import weakref

import torch

from . import _hook_points

_PLAIN: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()
_WRAPPED = re.compile(r"(^|\.)_original_component(?=\.|$)")


def _unwrapped_name(name: str) -> str:
    """'model.layers.0._original_component.self_attn._original_component.q_proj...' ->
    'model.layers.0.self_attn.q_proj...' (the HF name of a bridge-held tensor)."""
    return _WRAPPED.sub("", name).lstrip(".")


def _build(bridge) -> torch.nn.Module:
    hf = bridge.original_model
    tensors = {}
    for name, t in [*hf.named_parameters(remove_duplicate=False),
                    *hf.named_buffers(remove_duplicate=False)]:
        tensors.setdefault(_unwrapped_name(name), t)
    with torch.device("meta"):
        plain = type(hf)(hf.config)
    for name, _ in [*plain.named_parameters(remove_duplicate=False),
                    *plain.named_buffers(remove_duplicate=False)]:
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
        if ("original_inv_freq" not in module._buffers
                and isinstance(getattr(module, "original_inv_freq", None), torch.Tensor)):
            module.original_inv_freq = module.inv_freq
    plain.generation_config = hf.generation_config
    return plain.eval()


# cfg flags that make the bridge compute extra hook points (split q/k/v inputs, per-head
# results, ...): with any of them on, only the bridge is the requested computation
_HOOK_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in",
               "use_hook_tokens")


def _probe_equal(bridge, plain) -> bool:
    """Whether `plain` reproduces the bridge's logits bitwise: batch 2 uncached, and a
    cached prefill + one step. Some bridges (GPT-2's split fused QKV) compute otherwise."""
    from transformers import DynamicCache

    tokens = torch.arange(12).reshape(2, 6) % bridge.cfg.d_vocab
    config = bridge.original_model.config
    ours, theirs = DynamicCache(config=config), DynamicCache(config=config)
    with torch.no_grad():
        checks = [(bridge(tokens), plain(input_ids=tokens).logits),
                  (bridge(tokens[:1], past_key_values=ours),
                   plain(input_ids=tokens[:1], past_key_values=theirs, use_cache=True).logits),
                  (bridge(tokens[:1, :1], past_key_values=ours),
                   plain(input_ids=tokens[:1, :1], past_key_values=theirs, use_cache=True).logits)]
    return all(torch.equal(a, b) for a, b in checks)


def plain_model(bridge) -> torch.nn.Module | None:
    """The unwrapped HF model sharing `bridge`'s weights, or None where it would not give
    the bridge's bits (built and probed once per bridge)."""
    if bridge not in _PLAIN:
        try:
            plain = _build(bridge)
        except LookupError:  # a layout whose tensors this mapping cannot find: the bridge only
            plain = None
        _PLAIN[bridge] = plain if plain is not None and _probe_equal(bridge, plain) else None
    return _PLAIN[bridge]


_MODULES: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()


def _all_modules(bridge) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """Every module of the bridge, and those that own capture hooks (its blocks)."""
    # the module tree is fixed once booted; walking it costs ~25 ms, a list scan ~1 ms
    if bridge not in _MODULES:
        modules = list(bridge.modules())
        _MODULES[bridge] = modules, [m for m in modules if hasattr(m, "_capture_hook_handles")]
    return _MODULES[bridge]


def hooks_attached(bridge) -> bool:
    """Whether anything observes or alters the bridge's forward pass: a hook on any of its
    modules, a global module hook, or a cfg flag that adds hook points. The pre-hooks the
    bridge's blocks put on their own norms to feed their hook points do not count: they
    change nothing while those hook points are empty."""
    from torch.nn.modules import module as nn_module

    if (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
            or nn_module._global_backward_hooks):
        return True
    if any(getattr(bridge.cfg, flag, False) for flag in _HOOK_FLAGS):
        return True
    modules, owners = _all_modules(bridge)
    hooked = [m for m in modules if m._forward_hooks or m._forward_pre_hooks
              or m._backward_hooks or m._backward_pre_hooks]
    if not hooked:
        return False
    own = {h.id for m in owners for h in m._capture_hook_handles}
    return any(m._backward_hooks or m._backward_pre_hooks
               or (set(m._forward_hooks) | set(m._forward_pre_hooks)) - own for m in hooked)


def logits(bridge, tokens: torch.Tensor, *, fwd_hooks=(), **kwargs) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] of the bridge for `tokens` [batch, pos], with `fwd_hooks`
    ((name, fn) pairs) added for this call only: through the plain HF tree when nothing else
    is hooked, it gives the same bits, and it has every hook point asked for (see
    `_hook_points`), else the bridge."""
    plain = None if hooks_attached(bridge) else plain_model(bridge)
    points = _hook_points.translate(bridge, plain, fwd_hooks) if plain is not None else None
    if points is None:
        with bridge.hooks(fwd_hooks=list(fwd_hooks)):
            return bridge(tokens, **kwargs)
    with _hook_points.attached(bridge, points):
        return plain(input_ids=tokens, use_cache="past_key_values" in kwargs, **kwargs).logits
