"""Tiny random-weight models for unit tests: seeded, offline, seconds to build.

Each entry is a transformers config of one architecture family (GQA where the family has
it; Gemma 3 with sliding-window and global layers). The tokenizer is byte level, so any
text tokenizes offline with no vocabulary file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

TINY_VOCAB = 3 + 256  # <bos>, <eos>, <pad> + one token per byte
TINY_CTX = 2048
# A wider init than HF's 0.02 so next-token distributions are peaked, not near-uniform:
# near-ties make greedy comparisons fragile.
_INIT = 0.2


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (no merges) with <bos>=0, <eos>=1, <pad>=2."""
    specials = ["<bos>", "<eos>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    # TransformerBridge re-creates tokenizers by name unless they already add BOS; it still
    # reads the name, so give it one.
    tok.init_kwargs["name_or_path"] = "kvdirect-interp/byte-tokenizer"
    return tok


_COMMON = dict(
    vocab_size=TINY_VOCAB, initializer_range=_INIT, bos_token_id=0, eos_token_id=1, pad_token_id=2
)


def _llama() -> Any:
    return transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CTX,
        **_COMMON,
    )


def _gemma3() -> Any:
    return transformers.Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=TINY_CTX,
        **_COMMON,
    )


def _qwen2() -> Any:
    return transformers.Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CTX,
        **_COMMON,
    )


def _gpt2() -> Any:
    return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=TINY_CTX, **_COMMON)


def _neox() -> Any:
    return transformers.GPTNeoXConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        rotary_pct=0.25,
        max_position_embeddings=TINY_CTX,
        **_COMMON,
    )


def _mistral() -> Any:
    return transformers.MistralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        sliding_window=16,
        max_position_embeddings=TINY_CTX,
        **_COMMON,
    )


TINY_CONFIGS: dict[str, tuple[str, Callable[[], Any]]] = {
    "tiny-llama": ("llama", _llama),
    "tiny-gemma3": ("gemma3", _gemma3),
    "tiny-qwen2": ("qwen2", _qwen2),
    "tiny-gpt2": ("gpt2", _gpt2),
    "tiny-neox": ("gpt_neox", _neox),
    "tiny-mistral": ("mistral", _mistral),
}


def build_tiny_hf(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(hf_model, tokenizer) for a tiny family; the same seed gives the same weights."""
    _, make_config = TINY_CONFIGS[name]
    config = make_config()
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return hf.to(dtype).eval(), byte_tokenizer()


# --- every decoder-only family TransformerLens supports, at tiny sizes (tests/unit/test_families)

# Sizes given to any family's config class where it has the field: two layers of width 64.
_FAMILY_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    sliding_window=8,
    rotary_dim=8,  # GPT-J, CodeGen: must fit in head_dim
    # mixture of experts
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    n_shared_experts=1,
    first_k_dense_replace=1,
    # multi-head latent attention (DeepSeek style)
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=16,
    qk_nope_head_dim=16,
    v_head_dim=16,
    num_nextn_predict_layers=0,
    **_COMMON,
)
_MLA = dict(num_key_value_heads=4)  # latent attention has as many K/V heads as queries
# Per model type, fields whose defaults do not fit the sizes above (checked by the config's
# own validators, which is why they are needed)
_FAMILY_EXTRA: dict[str, dict[str, Any]] = {
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    "mamba2": dict(num_heads=8, n_groups=1),
    **{m: _MLA for m in ("deepseek_v2", "deepseek_v3", "youtu", "glm_moe_dsa", "glm4_moe_lite")},
}


def tiny_family_config(architecture: str) -> Any:
    """A config of HF class `architecture` (e.g. 'OlmoForCausalLM') at tiny sizes.

    Only fields the config class has are set; a layer_types list keeps one layer of each
    kind the default has (at least two layers), so hybrids keep their mix."""
    config_class = getattr(transformers, architecture).config_class
    default = config_class()
    have = set(default.to_dict()) | set(getattr(default, "attribute_map", {}))
    kw = {k: v for k, v in _FAMILY_SIZES.items() if k in have}
    layer_types = getattr(default, "layer_types", None)
    if layer_types:
        kinds = list(dict.fromkeys(layer_types))
        kw["num_hidden_layers"] = max(2, len(kinds))
        kw["layer_types"] = (kinds * 2)[: kw["num_hidden_layers"]]
    kw.update(_FAMILY_EXTRA.get(config_class.model_type, {}))
    # derived fields (a property on some configs, maybe behind an alias) are left to the class
    alias = getattr(default, "attribute_map", {})
    return config_class(
        **{
            k: v
            for k, v in kw.items()
            if not isinstance(getattr(config_class, alias.get(k, k), None), property)
        }
    )


def build_family_hf(architecture: str, *, seed: int = 0):
    """(hf_model in float32 eval mode, byte tokenizer) for a tiny `architecture`, seeded."""
    config = tiny_family_config(architecture)
    model_class = getattr(transformers, architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = model_class._from_config(config, attn_implementation="eager")
    hf.config.architectures = [architecture]
    return hf.float().eval(), byte_tokenizer()


def decoder_families() -> dict[str, str | None]:
    """Every architecture in TransformerLens's adapter registry -> None where it is a
    decoder-only causal LM that transformers can build from a config class, else why not."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    out: dict[str, str | None] = {}
    for arch in SUPPORTED_ARCHITECTURES:
        cls = getattr(transformers, arch, None)
        if cls is None:
            out[arch] = "not in transformers (remote code or a TransformerLens-only format)"
        elif arch not in causal:
            out[arch] = "not a causal LM (encoder, encoder-decoder, vision or audio model)"
        elif arch.endswith("ForConditionalGeneration"):
            out[arch] = "multimodal (a vision or audio tower around the decoder)"
        elif "bert" in cls.config_class.model_type and "decoder" not in arch.lower():
            out[arch] = "an encoder (BERT) with a causal head: post-norm, not decoder-only"
        else:
            out[arch] = None
    return out
