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
