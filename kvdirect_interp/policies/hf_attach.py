"""The hooks of `CachePolicy.attach` on a plain Hugging Face causal LM: where they go
(`HFModel`: the decoder layers, their attention modules, the config's sliding windows) and
`Driver`, the base of each policy's driver, which registers them for one `attach` and
always removes them (TransformerLens's hooks(): try/finally).

A driver holds one generation's state, as a Runner does in the package's own loop, and the
`Cache` handed to `generate`. Two hooks on the causal LM frame each forward pass that uses
that cache: before it (`before`: announce the chunk, set up a replay, refuse what the
policy cannot serve) and after it (`after`: the layers evict, as after a runner's pass). A
pass without this cache (the user's own, or a driver's own recomputation) is left alone.
The policy's own hooks (attention weights, residual checkpoints) sit on the decoder layers
and attention modules and act only inside a pass of this cache (`acting`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from ..memory import config_sliding_windows
from .base import CachePolicy

# attention module names of the decoder layers of HF's families (Llama, GPT-2, GPT-NeoX)
_ATTENTION_NAMES = ("self_attn", "attn", "attention")
# the layer types whose keys and values a policy's layers can hold and mask
ATTENTION_TYPES = ("full_attention", "sliding_attention")

Hook = tuple[torch.nn.Module, str, Callable]  # (module, "pre" | "post", torch hook fn)


class HFModel:
    """A plain HF causal LM as the drivers see it: text config, decoder layers, devices."""

    def __init__(self, model) -> None:
        if not isinstance(model, PreTrainedModel) or not hasattr(model, "generate"):
            raise TypeError(
                "attach drives a plain Hugging Face causal LM (a transformers "
                f"PreTrainedModel with generate), got {type(model).__name__}. For a "
                "TransformerBridge, use kvdirect_interp.generate(bridge, ..., cache=policy), "
                "or attach to a plain HF model (fastpath.build_plain(bridge) shares its weights)"
            )
        if model.config.is_encoder_decoder:
            raise NotImplementedError(
                f"attach serves decoder-only causal LMs; {type(model).__name__} is an "
                "encoder-decoder"
            )
        self.model = model
        self.family = type(model).__name__
        self.config = model.config.get_text_config(decoder=True)
        self.n_layers = self.config.num_hidden_layers
        self.owner, self.name = self._decoder_stack()
        self.layers = self.owner.get_submodule(self.name)
        self.windows = config_sliding_windows(self.config, self.n_layers)

    def _decoder_stack(self) -> tuple[torch.nn.Module, str]:
        """(owner, name): the module whose ModuleList child `name` holds the decoder layers
        (the first list of num_hidden_layers modules in the tree, e.g. model.layers)."""
        for owner in self.model.modules():
            for name, child in owner.named_children():
                if isinstance(child, torch.nn.ModuleList) and len(child) == self.n_layers:
                    return owner, name
        raise NotImplementedError(
            f"attach cannot find {self.family}'s decoder layers (no list of "
            f"{self.n_layers} modules in its tree)"
        )

    def attention(self, layer: int) -> torch.nn.Module:
        """The attention module of decoder layer `layer`."""
        block = self.layers[layer]
        for name in _ATTENTION_NAMES:
            module = getattr(block, name, None)
            if isinstance(module, torch.nn.Module):
                return module
        raise NotImplementedError(
            f"{self.family}'s decoder layer {layer} has no attention module named one of "
            f"{list(_ATTENTION_NAMES)}"
        )

    @property
    def device(self) -> torch.device:
        """Where the embedding is: the replays' token ids and positions start there."""
        return self.model.get_input_embeddings().weight.device

    def layer_device(self, layer: int) -> torch.device:
        """Where decoder layer `layer`'s weights are (its own device under a device_map)."""
        return next(self.layers[layer].parameters()).device

    def kv_shape(self) -> tuple[int, int, int]:
        """(n_kv_heads, d_head, d_model) from the config."""
        c = self.config
        heads = c.num_attention_heads
        d_head = getattr(c, "head_dim", None) or c.hidden_size // heads
        return getattr(c, "num_key_value_heads", None) or heads, d_head, c.hidden_size

    def check_attention_only(self, policy: CachePolicy) -> None:
        """Refuse, by name, a model with layers that hold no keys and values (recurrent,
        convolutional, linear attention) or attend in a pattern the policy's layers do
        not mask (chunked attention): only full and sliding-window attention are served."""
        types = getattr(self.config, "layer_types", None) or []
        other = sorted({t for t in types if t not in ATTENTION_TYPES})
        if other:
            raise NotImplementedError(
                f"{policy.name} cannot serve {self.family}: its layers of type {other} are "
                f"not {' or '.join(ATTENTION_TYPES)} (nothing to hold, rebuild or mask as "
                "this package does)"
            )

    def check_eager(self, policy: CachePolicy) -> None:
        """Scoring policies read attention weights, which only eager attention returns."""
        impl = getattr(self.model.config, "_attn_implementation", None)
        if impl != "eager":
            raise ValueError(
                f"{policy.name} scores tokens by their attention weights, which only eager "
                f"attention returns; {self.family} runs {impl!r} attention. Load it with "
                "attn_implementation='eager' (or call model.set_attn_implementation('eager'))"
            )

    def check_fits(self, what: str, tokens: int) -> None:
        """A window or budget cannot exceed the model's context (where the config says it)."""
        n_ctx = getattr(self.config, "max_position_embeddings", None)
        if n_ctx is not None and tokens > n_ctx:
            raise ValueError(
                f"{what} of {tokens} tokens exceeds the model's context of {n_ctx}; "
                f"accepted: 1..{n_ctx}"
            )


def hidden_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A decoder layer's input [batch, pos, d_model], from a forward pre-hook's arguments."""
    return args[0] if args else kwargs["hidden_states"]


class Driver:
    """One attach's state and the Cache handed to generate; subclasses fill in `hooks`,
    `before` and `after`. `batches`: whether rows of a batch are served (else batch 1)."""

    batches = False

    def __init__(self, hf: HFModel, policy: CachePolicy, cache: Cache) -> None:
        self.hf = hf
        self.policy = policy
        self.cache = cache
        self.n_seen = 0  # tokens processed by passes of this cache
        self.in_pass = False  # inside a forward pass of this cache
        self.inner = False  # inside the driver's own recomputation (its hooks ignore it)
        self._q = 0

    def acting(self) -> bool:
        """Whether a policy hook firing now belongs to a pass of this cache."""
        return self.in_pass and not self.inner

    def hooks(self) -> list[Hook]:
        """The policy's hooks on the HF modules, registered for the whole attach."""
        return []

    def before(self, ids: torch.Tensor | None, q: int, kwargs: dict) -> dict | None:
        """Called before a pass of q tokens (ids [1, q], None for inputs_embeds); may return
        the forward's keyword arguments replaced."""
        return None

    def after(self, q: int) -> None:
        """Called after a pass of q tokens (n_seen still counts the tokens before it)."""

    @contextmanager
    def registered(self) -> Iterator[Cache]:
        """Every hook registered on entry, every one removed on exit (also on error)."""
        handles = []
        model = self.hf.model
        try:
            handles.append(model.register_forward_pre_hook(self._pre, with_kwargs=True))
            handles.append(model.register_forward_hook(self._post, with_kwargs=True))
            for module, kind, fn in self.hooks():
                if kind == "pre":
                    handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(fn))
            yield self.cache
        finally:
            for handle in handles:
                handle.remove()
            self.in_pass = False

    def _check_rows(self, batch: int, mask: torch.Tensor | None) -> None:
        if self.batches:
            return
        if batch != 1:
            raise ValueError(
                f"{self.policy.name} under attach serves one sequence at a time (batch 1), "
                f"got batch {batch}; generate each prompt on its own (FullKV serves batches)"
            )
        if mask is not None and mask.dim() == 2 and not bool(mask.all()):
            raise ValueError(
                f"{self.policy.name} under attach serves unpadded sequences: the attention "
                "mask has padding (0) entries"
            )

    def _pre(self, module, args, kwargs):
        if self.inner or kwargs.get("past_key_values") is not self.cache:
            return None
        if args:  # input_ids given positionally: by keyword from here on
            kwargs = {**kwargs, "input_ids": args[0]}
            args = args[1:]
        ids = kwargs.get("input_ids")
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        if x is None:
            raise ValueError("a forward pass needs input_ids or inputs_embeds")
        self._check_rows(x.shape[0], kwargs.get("attention_mask"))
        q = x.shape[1]
        new = self.before(ids, q, kwargs)
        self.in_pass, self._q = True, q
        return args, (kwargs if new is None else new)

    def _post(self, module, args, kwargs, output):
        if not self.in_pass or self.inner:
            return None
        self.in_pass = False
        self.after(self._q)
        self.n_seen += self._q
        return None
