"""FLOPs per decode step from the model's shape (multiply-adds count 2).

A step at context T (tokens before the new one) costs, for the new token:
  forward  = 2 * P_block * L + 4 * L * n_heads * d_head * T_seen + 2 * d_model * vocab
where P_block is the parameters of one block's matrices and T_seen the keys attention
reads (`forward_flops`). Only positions whose logits are computed pay the unembedding: the
runners ask for the last position's alone (`logits_to_keep=1`). Each policy states its own
step (`policy.step_flops(arch, T)`):
  FullKV                              forward with T_seen = T + 1
  eviction baselines                  T_seen = min(T, budget) + 1
  KVDirect every_layer / min_bytes    + the rebuild of the evicted tokens' K/V
                                        (`rebuild_flops`; none where min_bytes keeps K/V)
  KVDirect first_layer / token_ids    + the forward of the n_evicted tokens through every
                                        layer (a re-prefill, attention among them included;
                                        no logits)
  NoCache                             the forward of all T + 1 tokens (the last one's logits)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from .policies import CachePolicy


@dataclass(frozen=True)
class Arch:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    gated_mlp: bool = True

    @classmethod
    def of(cls, model: TransformerBridge) -> Arch:
        cfg = model.cfg
        act = str(getattr(cfg, "act_fn", "")).lower()
        gated = getattr(cfg, "gated_mlp", None)
        if gated is None:
            gated = any(
                a in act for a in ("silu", "swish", "gelu_pytorch_tanh")
            ) and cfg.original_architecture not in ("GPT2LMHeadModel", "GPTNeoXForCausalLM")
        return cls(
            cfg.n_layers,
            cfg.d_model,
            cfg.n_heads,
            getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
            cfg.d_head,
            cfg.d_mlp,
            cfg.d_vocab,
            bool(gated),
        )

    @property
    def block_params(self) -> int:
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = (3 if self.gated_mlp else 2) * self.d_model * self.d_mlp
        return attn + mlp


def forward_flops(a: Arch, n_new: int, n_keys_each: float, logits: int | None = None) -> float:
    """FLOPs to run n_new tokens through the model, each attending to n_keys_each keys, and
    to unembed `logits` of them (default: all n_new)."""
    logits = n_new if logits is None else logits
    if not 0 <= logits <= n_new:
        raise ValueError(f"logits must be in 0..n_new = 0..{n_new}, got {logits!r}")
    dense = 2 * a.block_params * a.n_layers * n_new
    attention = 4 * a.n_layers * a.n_heads * a.d_head * n_keys_each * n_new
    return dense + attention + 2 * a.d_model * a.d_vocab * logits


def rebuild_flops(a: Arch, n_tokens: int, n_layers: int | None = None) -> float:
    """FLOPs to rebuild K and V of n_tokens from their residuals on n_layers layers (all by
    default): the two projections d_model -> n_kv_heads * d_head (norms, rotary ignored)."""
    layers = a.n_layers if n_layers is None else n_layers
    return 2 * layers * a.d_model * 2 * a.n_kv_heads * a.d_head * n_tokens


def step_flops(a: Arch, policy: CachePolicy, context: int, prompt: int | None = None) -> float:
    """FLOPs of one decode step at `context` tokens already seen: `policy.step_flops`."""
    if isinstance(policy, str):  # the name form was dropped at 0.1.0
        raise TypeError(
            f"step_flops takes a policy object, got the name {policy!r}: e.g. "
            "step_flops(arch, KVDirect(64, checkpoint='token_ids'), context), or "
            "kvdirect_interp.policies.registry.make(name, budget)"
        )
    return policy.step_flops(a, context, prompt)
