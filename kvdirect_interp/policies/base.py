"""The shared base of every cache policy: the policy contract, the runner contract that the
decode loop uses, and the cache layer.

A policy is a small frozen dataclass of settings (`CachePolicy`). It has one `name` (the
spelling used by the registry, experiments' tables and benchmarks), owns its formulas
(`bytes_per_token`, `step_flops`), and `runner(model)` makes a Runner holding one
generation's state. The decode loop in generation.py calls only `prefill`, `forward`,
`step`, `n_seen`, `bytes_held` and `bytes_transient` (see `Runner`). Policies other than
FullKV/NoCache hand the model a `Cache` of PolicyLayers: the attention of each layer calls
`update(new_k, new_v)`, and the layer decides which keys and values attention sees. Scores
and residual checkpoints come from hooks that the runner passes to each forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..hooks import forward as model_forward  # the one entry point: hooks.forward

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from ..cost import Arch
    from ..memory import Shape


def tensor_bytes(*tensors) -> int:
    """Bytes of the tensors given (None and other non-tensors count 0)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class Runner:
    """One generation's state under a policy: the contract the decode loop relies on.

    generation.py calls `prefill` once for a prompt (or `forward` for a chunk appended
    after earlier turns), then `step` once per new token; after each of these it reads
    `n_seen`, `bytes_held()` and `bytes_transient()` for the memory record. Logits returned
    are [batch, d_vocab], of the last position processed. A subclass implements `forward`
    (and the two byte counts where it holds anything)."""

    def __init__(self, model: TransformerBridge) -> None:
        self.model = model
        self.n_seen = 0  # tokens processed so far (prompt + generated), kept by `forward`

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Process the prompt [batch, pos]; logits of its last position."""
        return self.forward(tokens)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Process one new token [batch]; logits of its position."""
        return self.forward(token[:, None])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Process tokens [batch, q] after everything seen so far; logits of the last one.

        Runners ask the model for the last position's logits only (`logits_to_keep=1`, as
        transformers' generate does): the unembedding of a long prompt's other positions is
        most of a prefill's cost. Every runner does the same, so their logits stay comparable
        bit for bit."""
        raise NotImplementedError

    def bytes_held(self) -> dict[str, int]:
        """Bytes this policy holds between steps, by kind (kv, residual, token_ids, scores)."""
        return {}

    def bytes_transient(self) -> int:
        """Largest K/V rebuilt at once during the last forward (0 if nothing is rebuilt)."""
        return 0


class PolicyLayer(CacheLayerMixin):
    """One layer's cache: held K/V [batch, kv_heads, n, d_head] with their token positions
    (`positions` [n] here, one set for all heads; per head in evict.EvictingLayer; read
    either as `head_positions()`).

    `seen` counts every token the layer has processed, so rotary positions stay right when
    tokens are dropped: K is cached after rotary, so a held key keeps its original position's
    rotation, and the next query is rotated at position `seen`. Attention masks are built for
    the keys `update` returns as if they were the most recent ones (held keys at positions
    seen - n .. seen - 1, then the new ones). For causal masking that is exact for any chunk,
    whatever was dropped: every held key is in the past of every new query and the new keys
    come last, in order. A sliding window is exact only while the held keys are the last n
    positions; runners that drop scattered keys on sliding layers feed such layers one token
    at a time (see evict._EvictionRunner.forward).
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, layer: int, sliding_window: int | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.seen = 0
        self.keys = self.values = None
        self.positions = torch.zeros(0, dtype=torch.long)

    def lazy_initialization(self, key_states, value_states) -> None:
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        # positions live with the keys they index (a layer's own device under a device_map)
        self.positions = self.positions.to(key_states.device)
        self.is_initialized = True

    def head_positions(self) -> torch.Tensor:
        """Original positions of the held tokens per KV head, long [kv_heads, n]."""
        heads = 0 if self.keys is None else self.keys.shape[1]
        return self.positions.expand(heads, -1)

    def past_visible(self) -> int:
        """How many past keys the next `update` returns before the new ones."""
        return 0 if self.keys is None else self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        n = self.past_visible()
        return n + query_length, self.seen - n

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def append(self, key_states, value_states) -> None:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        new = torch.arange(self.seen, self.seen + q, device=self.positions.device)
        self.positions = torch.cat([self.positions, new])
        self.seen += q

    def keep_only(self, index: torch.Tensor) -> None:
        """Keep the held tokens at these indices (sorted, into the held dimension)."""
        self.keys = self.keys[:, :, index]
        self.values = self.values[:, :, index]
        self.positions = self.positions[index]

    def out_of_window(self) -> torch.Tensor:
        """Held tokens a sliding-window layer will never attend to again (bool [n])."""
        if self.sliding_window is None:
            return torch.zeros_like(self.positions, dtype=torch.bool)
        # the next query sits at position `seen`; it sees positions > seen - window
        return self.positions <= self.seen - self.sliding_window

    def update(self, key_states, value_states, *args, **kwargs):
        self.append(key_states, value_states)
        return self.keys, self.values

    def after_forward(self) -> None:
        """Called once after each forward pass: drop what the policy does not keep."""
        outside = self.out_of_window()
        if outside.any():
            self.keep_only((~outside).nonzero()[:, 0])


class CacheRunner(Runner):
    """A runner that hands the bridge a Cache of PolicyLayers and adds the policy's hooks."""

    def __init__(self, model: TransformerBridge, layers: list[PolicyLayer]) -> None:
        super().__init__(model)
        self.layers = layers
        self.cache = Cache(layers=layers)

    def kept_positions(self) -> list[torch.Tensor]:
        """Per layer, the original positions of the tokens whose K/V each KV head holds now:
        long [kv_heads, n] each (rows ascending)."""
        return [layer.head_positions() for layer in self.layers]

    def hooks(self) -> list[tuple[str, Callable]]:
        """Forward hooks active during each forward pass (added and removed every time)."""
        return []

    def before_forward(self, tokens: torch.Tensor) -> None:
        """Called with tokens [1, q] before each forward pass (KV-Direct replays here)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[0] != 1:
            raise ValueError(
                f"this cache policy runs one sequence at a time (batch 1); got "
                f"batch {tokens.shape[0]}"
            )
        self.before_forward(tokens)
        logits = model_forward(
            self.model, tokens, hooks=self.hooks(), past_key_values=self.cache, logits_to_keep=1
        )
        for layer in self.layers:
            layer.after_forward()
        self.n_seen += tokens.shape[1]
        return logits[:, -1]

    def bytes_held(self) -> dict[str, int]:
        return {"kv": tensor_bytes(*(t for l in self.layers for t in (l.keys, l.values)))}


def check_fits(model: TransformerBridge, name: str, tokens: int) -> None:
    """A window or budget cannot exceed the model's context."""
    n_ctx = model.cfg.n_ctx
    if tokens > n_ctx:
        raise ValueError(
            f"{name} of {tokens} tokens exceeds the model's context of {n_ctx}; "
            f"accepted: 1..{n_ctx}"
        )


@dataclass(frozen=True)
class CachePolicy:
    """What a cache policy is: settings, a name, its own formulas, and a runner."""

    @property
    def name(self) -> str:
        """The one spelling of this policy's kind, e.g. "FullKV", "H2O",
        "KVDirect[every_layer]" (settings such as the budget are not part of it)."""
        return type(self).__name__

    def runner(self, model: TransformerBridge) -> Runner:
        """A fresh Runner: one generation's (or one Session's) state under this policy."""
        raise NotImplementedError

    def attach(self, model) -> AbstractContextManager[Cache]:
        """This policy as the cache of a plain Hugging Face causal LM's own `generate`:

            with policy.attach(hf_model) as cache:
                out = hf_model.generate(ids, past_key_values=cache, max_new_tokens=20)

        The hooks the policy needs (attention weights, residual checkpoints, the
        bookkeeping around each forward pass) are registered on the HF modules on entry and
        always removed on exit. See policies/hf_cache.py."""
        # hf_cache imports every policy module, and they import this one: a cycle if the
        # import stood at the top of this module
        from .hf_cache import attach

        return attach(self, model)

    def bytes_per_token(self, shape: Shape) -> dict[str, int]:
        """Bytes held per token, by kind ("kv", "residual", "token_ids"), for tokens past any
        window or budget: the rate at which the runner's `bytes_held` grows on a long
        sequence (layers without a sliding window). A kind absent costs nothing."""
        raise NotImplementedError

    def step_flops(self, arch: Arch, context: int, prompt: int | None = None) -> float:
        """FLOPs of one decode step with `context` tokens already seen (cost.py's formulas),
        the first `prompt` of them one prompt (default: all of them). Only a policy whose
        cache depends on where the prompt ended (SnapKV compresses it once) reads `prompt`."""
        raise NotImplementedError
