"""Real models' shapes for random-weight runs: Gemma 3-4B and Llama-3.2-1B.

`CONFIGS` holds the fields of each model's published config.json that decide its shape,
rotary and sliding windows (with the file they come from), as transformers keyword
arguments. From them: `arch` and `shape` (cost.Arch, memory.Shape) for the roofline, and
`random_model`, a TransformerBridge with random weights of that shape (nothing is downloaded
or packaged: a GEMM's time does not depend on the values it multiplies). `SIZES` shrink the
same configs for CPU runs of the same code: "small" keeps the real widths on fewer layers
(a layer's rebuild is the real one), "tiny" shrinks everything (tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import transformers

from ._tiny import byte_tokenizer
from .cost import Arch
from .memory import Shape
from .models import load_model

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

CONFIGS: dict[str, dict[str, Any]] = {
    "gemma3-4b": {
        "model_type": "gemma3_text",
        "source": "google/gemma-3-4b-it config.json, text_config: "
        "https://huggingface.co/google/gemma-3-4b-it/blob/main/config.json",
        "config": dict(
            vocab_size=262208,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=256,
            # five sliding layers per global one: Gemma3TextConfig's default layer_types
            sliding_window=1024,
            max_position_embeddings=131072,
            rms_norm_eps=1e-6,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            },
        ),
    },
    "llama3.2-1b": {
        "model_type": "llama",
        "source": "meta-llama/Llama-3.2-1B config.json: "
        "https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json",
        "config": dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            hidden_act="silu",
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
    },
}
# Overrides per size and model. "small": real widths, fewer layers (Gemma keeps one global
# layer per six), a small vocabulary (the unembedding is not what claim 6 times).
_TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
)
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {name: {} for name in CONFIGS},
    "small": {
        "gemma3-4b": dict(num_hidden_layers=6, vocab_size=512, sliding_window=128),
        "llama3.2-1b": dict(num_hidden_layers=2, vocab_size=512),
    },
    "tiny": {
        "gemma3-4b": dict(_TINY, num_hidden_layers=6, query_pre_attn_scalar=16, sliding_window=16),
        "llama3.2-1b": dict(_TINY, num_hidden_layers=2),
    },
}
# the byte tokenizer's special ids (_tiny.byte_tokenizer): <bos>=0, <eos>=1, <pad>=2
_SPECIAL_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)


def _check(name: str, size: str) -> None:
    if name not in CONFIGS:
        raise ValueError(f"unknown real shape {name!r}; accepted: {list(CONFIGS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; accepted: {list(SIZES)}")


def hf_config(name: str, size: str = "full", **overrides: Any):
    """The transformers config of `name` at `size`, with `overrides` on top."""
    _check(name, size)
    entry = CONFIGS[name]
    kwargs = {**entry["config"], **SIZES[size][name], **_SPECIAL_IDS, **overrides}
    return transformers.AutoConfig.for_model(entry["model_type"], **kwargs)


def arch(name: str, size: str = "full", **overrides: Any) -> Arch:
    """cost.Arch of the config (both families gate their MLP)."""
    c = hf_config(name, size, **overrides)
    return Arch(
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size,
        gated_mlp=True,
    )


def shape(name: str, size: str = "full", bytes_per_element: int = 2, **overrides: Any) -> Shape:
    """memory.Shape of the config (bf16 by default), sliding layers counted as the HF
    config lays them out."""
    c = hf_config(name, size, **overrides)
    types = getattr(c, "layer_types", None) or []
    n_sliding = sum(t == "sliding_attention" for t in types)
    return Shape(
        f"{name} ({size})" if size != "full" else name,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_key_value_heads,
        c.head_dim,
        bytes_per_element,
        n_global_layers=c.num_hidden_layers - n_sliding if n_sliding else None,
        sliding_window=c.sliding_window if n_sliding else None,
    )


def global_layer(name: str, size: str = "full", **overrides: Any) -> int:
    """The first layer attending to every token (Gemma 3: layer 5; Llama: layer 0): the
    layer whose K/V an evicted token still needs past every sliding window."""
    types = getattr(hf_config(name, size, **overrides), "layer_types", None) or []
    return next((i for i, t in enumerate(types) if t != "sliding_attention"), 0)


def random_model(
    name: str,
    size: str = "full",
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    seed: int = 0,
    **overrides: Any,
) -> TransformerBridge:
    """A TransformerBridge of `name`'s shape at `size` with seeded random weights (the HF
    initialisation), built directly on `device` in `dtype`, with the byte tokenizer."""
    config = hf_config(name, size, **overrides)
    with torch.random.fork_rng(), torch.device(device):
        torch.manual_seed(seed)
        hf = transformers.AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation="eager"
        )
    return load_model(hf.eval(), tokenizer=byte_tokenizer(), device=device)
