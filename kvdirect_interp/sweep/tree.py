"""The plain HF tree of one model, run from any decoder layer (`Layered`).

Layers below the start are replaced by a pass-through and the start layer's input is given
as `inputs_embeds`, so HF's own model forward (its mask helpers, rotary module, final norm
and head) runs the rest. Only shallow copies are made: the shared tree is never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from .._hook_points import module_hooks
from ..fastpath import unwrapped_name


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder layer below the start layer: hands its input on."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        if hasattr(layer, "attention_type"):  # read by some model forwards
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Given(torch.nn.Module):
    """Stands in for the base model: its output is the hidden states it is given (to run
    the causal-LM head alone, with the family's own code: lm_head, logit soft-capping)."""

    def forward(self, *args, inputs_embeds=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPast

        return BaseModelOutputWithPast(last_hidden_state=inputs_embeds)


def _with_children(module: torch.nn.Module, **children: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of `module` (the same parameters, buffers, config and hook dicts) with
    some children replaced; the shared tree itself is never changed."""
    new = object.__new__(type(module))
    new.__dict__.update(module.__dict__)
    new._modules = {**module._modules, **children}
    return new


def _hook_component(model, name: str, suffix: str) -> torch.nn.Module:
    """The bridge component a hook point aliases, e.g. blocks.3.hook_resid_mid ->
    blocks.3.ln2 (its hook_in)."""
    target = model.hook_dict[name].name  # e.g. 'blocks.3.ln2.hook_in'
    path, _, leaf = target.rpartition(".")
    if leaf != suffix or not path:
        raise LookupError(f"{name} is {target}, not a component's {suffix}")
    return model.get_submodule(path)


class Layered:
    """The plain tree of one model, run from any layer (see the module docstring)."""

    def __init__(self, model, plain: torch.nn.Module) -> None:
        # holds plain's children and shallow copies, never plain itself: the cache entry
        # (keyed weakly by plain) goes when the fast path drops that tree
        names: dict[int, list[str]] = {}  # a wrapped module appears under several names
        for n, m in model.original_model.named_modules(remove_duplicate=False):
            names.setdefault(id(m), []).append(unwrapped_name(n))
        plain_names = dict(plain.named_modules(remove_duplicate=False))

        def counterpart(component) -> torch.nn.Module:
            target = getattr(component, "original_component", None)
            for name in names.get(id(target), []):
                if name in plain_names:
                    return plain_names[name]
            raise LookupError(f"{type(component).__name__} has no module in the plain tree")

        self.n_layers = model.cfg.n_layers
        self.layers = [counterpart(block) for block in model.blocks]
        base_name = getattr(plain, "base_model_prefix", "")
        self.base = plain.get_submodule(base_name) if base_name else None
        self.base_name = base_name
        lists = [
            (n, m)
            for n, m in (self.base.named_children() if self.base is not None else [])
            if isinstance(m, torch.nn.ModuleList)
            and len(m) == self.n_layers
            and all(a is b for a, b in zip(m, self.layers, strict=True))
        ]
        if len(lists) != 1:
            raise LookupError("the decoder layers are not one list of the base model")
        self.list_name = lists[0][0]
        # resid_mid: the input of the module behind hook_resid_mid (ln2) and the output of
        # the one behind hook_mlp_out, as patch_hooks uses them on the bridge
        self.mid_in, self.mid_out = {}, {}
        for l in range(self.n_layers):
            try:
                ln2 = _hook_component(model, f"blocks.{l}.hook_resid_mid", "hook_in")
                mlp = _hook_component(model, f"blocks.{l}.hook_mlp_out", "hook_out")
                self.mid_in[l], self.mid_out[l] = counterpart(ln2), counterpart(mlp)
            except (KeyError, LookupError):
                self.mid_in, self.mid_out = {}, {}
                break
        self._views: dict[int, torch.nn.Module] = {}
        self.head = _with_children(plain, **{base_name: _Given()})  # the head alone
        self.probed: dict[str, str | None] = {}  # site -> None (bitwise equal) or why not

    def view(self, start: int) -> torch.nn.Module:
        """The causal LM with decoder layers 0..start-1 passing their input through."""
        if start not in self._views:
            skipped = [_PassThrough(m) if i < start else m for i, m in enumerate(self.layers)]
            base = _with_children(self.base, **{self.list_name: torch.nn.ModuleList(skipped)})
            self._views[start] = _with_children(self.head, **{self.base_name: base})
        return self._views[start]

    @contextmanager
    def mid_patch(self, layer: int, replace: Callable[[torch.Tensor], torch.Tensor]):
        """For one pass: ln2's input replaced by replace(input), the layer's output rebuilt
        as patched mid + MLP output (the same addition `hooks.patch_hooks` makes)."""
        state: dict[str, torch.Tensor] = {}

        def set_mid(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            state["mid"] = replace(x)
            if args:
                return (state["mid"], *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": state["mid"]}

        def keep_mlp_out(module, args, output):
            state["mlp_out"] = output

        def rebuild(module, args, output):
            post = state.pop("mid") + state.pop("mlp_out")
            return (post, *output[1:]) if isinstance(output, tuple) else post

        with module_hooks(
            pre=[(self.mid_in[layer], set_mid)],
            post=[(self.mid_out[layer], keep_mlp_out), (self.layers[layer], rebuild)],
        ):
            yield
