"""A policy's hook points on the fast path: resid_pre and the attention pattern, taken from
the plain HF tree's own modules instead of the bridge's HookPoints (used by `fastpath`).

The cache policies need two hook points: `blocks.{l}.hook_resid_pre` (KVDirect records
residual checkpoints there, and its first_layer replay replaces block 0's input) and
`blocks.{l}.attn.hook_pattern` (H2O, SnapKV, TOVA score tokens from it). On the plain tree
they are the decoder layer's input (a forward pre-hook that may replace it) and the eager
attention module's second output (a forward hook that observes it). Hook functions are
called as TransformerLens calls them, `fn(tensor, hook=<the bridge's HookPoint>)`. Whether
the plain tree hands them the bridge's bits is probed once per tree (captured tensors and a
replaced resid_pre, prefill and a cached step); where it does not, or for any other hook
point, the forward pass goes through the bridge.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

# hook name -> (kind, plain module, the bridge's HookPoint)
HookMap = dict[str, tuple[str, torch.nn.Module, object]]


def hook_map(bridge, counterpart: Callable[[torch.nn.Module], torch.nn.Module]) -> HookMap:
    """Every layer's two hook points and their plain-tree modules (`counterpart` maps a
    bridge component to the plain module of the HF module it wraps)."""
    hook_dict = bridge.hook_dict
    out = {}
    for l, block in enumerate(bridge.blocks):
        # recurrent / state-space blocks (Mamba, RWKV, hybrids) have no attention module
        attn = block._modules.get("attn")
        for name, kind, component in [
            (f"blocks.{l}.hook_resid_pre", "pre", block),
            (f"blocks.{l}.attn.hook_pattern", "pattern", attn),
        ]:
            if name in hook_dict and component is not None:
                out[name] = (kind, counterpart(component), hook_dict[name])
    return out


def points(known: HookMap, fwd_hooks) -> list[tuple[str, torch.nn.Module, object, object]] | None:
    """(kind, plain module, HookPoint, fn) per hook, or None if a hook point has no
    counterpart on the plain tree."""
    out = []
    for name, fn in fwd_hooks:
        if name not in known:
            return None
        kind, module, hook = known[name]
        out.append((kind, module, hook, fn))
    return out


@contextmanager
def attached(hook_points):
    """Register the plain-tree hooks for one forward pass; always removed."""
    handles = []
    try:
        for kind, module, hook, fn in hook_points:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(_pre(fn, hook), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(_pattern(fn, hook)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pre(fn, hook):
    def run(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]  # [batch, pos, d_model]
        new = fn(x, hook=hook)
        if new is None or new is x:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return run


def _pattern(fn, hook):
    def run(module, args, output):
        pattern = output[1]  # [batch, heads, q, kv], eager attention's softmax weights
        if pattern is None:
            raise RuntimeError(f"{hook.name}: the attention module returned no weights")
        new = fn(pattern, hook=hook)
        if new is not None and new is not pattern:
            raise RuntimeError(
                f"{hook.name}: on the fast path attention patterns can be observed, not replaced"
            )

    return run


def probe(bridge, plain, known: HookMap) -> bool:
    """Same captured resid_pre and pattern tensors, and the same logits with a replaced
    resid_pre, on both paths: a batch-1 prefill and one cached step."""
    from transformers import DynamicCache

    n = bridge.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)]
    names += [f"blocks.{l}.attn.hook_pattern" for l in range(n)]
    if any(name not in bridge.hook_dict for name in names):
        return False
    tokens = torch.arange(7)[None] % bridge.cfg.d_vocab
    config = bridge.original_model.config
    seen = {"bridge": [], "plain": []}

    def hooks(path):
        def save(x, hook):
            seen[path].append(x.detach().clone())

        replaced = (f"blocks.{min(1, n - 1)}.hook_resid_pre", lambda x, hook: x * 0.5)
        return [(name, save) for name in names] + [replaced]

    out = {}
    with torch.no_grad():
        for path in ("bridge", "plain"):
            cache = DynamicCache(config=config)
            out[path] = []
            for chunk in (tokens[:, :6], tokens[:, 6:]):
                if path == "bridge":
                    with bridge.hooks(fwd_hooks=hooks(path)):
                        out[path].append(bridge(chunk, past_key_values=cache))
                else:
                    with attached(points(known, hooks(path))):
                        out[path].append(
                            plain(input_ids=chunk, past_key_values=cache, use_cache=True).logits
                        )
    pairs = [
        *zip(out["bridge"], out["plain"], strict=True),
        *zip(seen["bridge"], seen["plain"], strict=False),
    ]  # counts checked below
    return len(seen["bridge"]) == len(seen["plain"]) == 2 * len(names) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in pairs
    )


@contextmanager
def module_hooks(pre=(), post=()):
    """Torch hooks on plain modules for one block (the sweep's layered passes): `pre` are
    (module, fn) forward pre-hooks called with kwargs, `post` (module, fn) forward hooks.
    Registered here, like every hook of the package; always removed."""
    handles = []
    try:
        for module, fn in pre:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        for module, fn in post:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()
