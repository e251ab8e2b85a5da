"""FLOPs per decode step from the model's shape (multiply-adds count 2), per policy.

A step at context T (tokens before the new one) costs, for the new token:
  forward  = 2 * P_block * L + 4 * L * n_heads * d_head * T_seen + 2 * d_model * vocab
where P_block is the parameters of one block's matrices and T_seen the keys attention
reads. A policy changes T_seen (eviction: the budget) or adds recomputation:
  every_layer / min_bytes rebuild  + 2 * L * d_model * 2 * n_kv * d_head * n_evicted
  first_layer / token_ids re-prefill + the forward of the n_evicted tokens through every
                                      layer (attention among them included)
  NoCache                            the forward of all T + 1 tokens
"""

from __future__ import annotations

from dataclasses import dataclass


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
    def of(cls, model) -> "Arch":
        cfg = model.cfg
        act = str(getattr(cfg, "act_fn", "")).lower()
        gated = getattr(cfg, "gated_mlp", None)
        if gated is None:
            gated = any(a in act for a in ("silu", "swish", "gelu_pytorch_tanh")) and \
                cfg.original_architecture not in ("GPT2LMHeadModel", "GPTNeoXForCausalLM")
        return cls(cfg.n_layers, cfg.d_model, cfg.n_heads,
                   getattr(cfg, "n_key_value_heads", None) or cfg.n_heads, cfg.d_head,
                   cfg.d_mlp, cfg.d_vocab, bool(gated))

    @property
    def block_params(self) -> int:
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = (3 if self.gated_mlp else 2) * self.d_model * self.d_mlp
        return attn + mlp


def forward_flops(a: Arch, n_new: int, n_keys_each: float) -> float:
    """FLOPs to run n_new tokens through the model, each attending to n_keys_each keys."""
    dense = 2 * a.block_params * a.n_layers * n_new
    attention = 4 * a.n_layers * a.n_heads * a.d_head * n_keys_each * n_new
    return dense + attention + 2 * a.d_model * a.d_vocab * n_new


def step_flops(a: Arch, policy: str, context: int, budget: int) -> float:
    """FLOPs of one decode step at `context` tokens already seen.

    policy: FullKV, NoCache, KVDirect:<mode>, or an eviction baseline's name."""
    evicted = max(0, context - budget)
    if policy == "FullKV":
        return forward_flops(a, 1, context + 1)
    if policy == "NoCache":
        return forward_flops(a, context + 1, (context + 2) / 2)
    if policy.startswith("KVDirect"):
        mode = policy.split(":", 1)[1] if ":" in policy else "every_layer"
        step = forward_flops(a, 1, context + 1)
        if mode in ("every_layer", "min_bytes"):
            if mode == "min_bytes" and 2 * a.n_kv_heads * a.d_head <= a.d_model:
                return step  # K/V are kept on every layer: nothing to rebuild
            return step + 2 * a.n_layers * a.d_model * 2 * a.n_kv_heads * a.d_head * evicted
        return step + forward_flops(a, evicted, (evicted + 1) / 2)  # a re-prefill
    return forward_flops(a, 1, min(context, budget) + 1)  # eviction: attention over the budget
