"""A pass over positions p.. of several cells patched at p, on the clean K/V before p."""

from __future__ import annotations

from contextlib import ExitStack

import torch

from .._hook_points import module_hooks
from .inputs import Inputs, replacer, rows_replacer
from .tree import Layered


def grown_pass(
    lay: Layered, inp: Inputs, p: int, group: list[int], last_only: bool, hidden: bool = False
):
    """Logits [len(group)*batch, 1 or pos-p, vocab] of the cells (l, p), l in group (or the
    final-norm hidden states [..., pos-p, d_model] when hidden=True): one pass over
    positions p.. (the clean K/V before p from HF's cache) that starts at the first cell's
    start layer, each later cell joining the batch at its own start layer (a pre-hook
    concatenates its patched input), so no row is computed twice."""
    from transformers import DynamicCache

    n_batch, n_pos = inp.tokens.shape
    mid = inp.site == "resid_mid"
    starts = [inp.start(l) for l in group]
    # each cell's input at its start layer, positions p..: resid_mid cells start from the
    # clean resid_pre and are patched inside their layer (mid_patch), the others here
    inputs = [
        inp.base[l][:, p:] if mid else replacer(inp.donor[l], [p], p, n_batch)(inp.base[l][:, p:])
        for l in group
    ]
    kwargs: dict = {"use_cache": False}
    if p > 0:
        data = []
        for j, (k, v) in enumerate(inp.kv):
            active = max(1, sum(s <= j for s in starts))
            data.append((k[:, :, :p].repeat(active, 1, 1, 1), v[:, :, :p].repeat(active, 1, 1, 1)))
        kwargs = {
            "use_cache": True,
            "past_key_values": DynamicCache(ddp_cache_data=data),
            "position_ids": torch.arange(p, n_pos, device=inp.tokens.device)[None],
        }
    joining = {s: inputs[i] for i, s in enumerate(starts) if i}

    def grow(module, args, kwargs):
        j = module_layer[id(module)]
        h = args[0] if args else kwargs["hidden_states"]
        if j in joining:
            h = torch.cat([h, joining[j]], dim=0)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape[0] not in (1, h.shape[0]):
            kwargs = {**kwargs, "attention_mask": mask[:1].expand(h.shape[0], *mask.shape[1:])}
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    module_layer = {id(lay.layers[j]): j for j in range(starts[0], lay.n_layers)}
    with ExitStack() as stack:
        later = [(lay.layers[j], grow) for j in range(starts[0] + 1, lay.n_layers)]
        stack.enter_context(module_hooks(pre=later))
        if mid:
            for i, l in enumerate(group):
                stack.enter_context(lay.mid_patch(l, rows_replacer(inp.donor[l], p, i, n_batch)))
        view = lay.view(starts[0])
        if hidden:
            return getattr(view, lay.base_name)(inputs_embeds=inputs[0], **kwargs).last_hidden_state
        return view(inputs_embeds=inputs[0], logits_to_keep=1 if last_only else 0, **kwargs).logits
