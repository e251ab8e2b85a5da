"""Models: packaged GGUF weights or tiny random configs -> HF model -> TransformerBridge."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import pandas as pd
import torch

from . import _tiny, _weights

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelShape:
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int


# Shapes of the packaged models, so list_models() needs no load (checked by an integration test).
_REAL_SHAPES = {
    "smollm2-135m": ModelShape("llama", 30, 576, 9, 3, 64),
    "gemma3-270m": ModelShape("gemma3", 18, 640, 4, 1, 256),
    "qwen2.5-0.5b": ModelShape("qwen2", 24, 896, 14, 2, 64),
}


def model_names() -> list[str]:
    return [*_weights.PACKAGED, *_tiny.TINY_CONFIGS]


def _check_name(name: str) -> None:
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")


def _tiny_shape(name: str) -> ModelShape:
    family, make_config = _tiny.TINY_CONFIGS[name]
    c = make_config()
    n_heads = c.num_attention_heads
    d_model = c.hidden_size
    return ModelShape(family, c.num_hidden_layers, d_model, n_heads,
                      getattr(c, "num_key_value_heads", None) or n_heads,
                      getattr(c, "head_dim", None) or d_model // n_heads)


def list_models() -> pd.DataFrame:
    """Every model name load_model accepts, with its family and attention shape."""
    rows = []
    for name in model_names():
        real = name in _weights.PACKAGED
        shape = _REAL_SHAPES[name] if real else _tiny_shape(name)
        rows.append({
            "name": name, "kind": "packaged" if real else "tiny random", "family": shape.family,
            "n_layers": shape.n_layers, "d_model": shape.d_model, "n_heads": shape.n_heads,
            "n_kv_heads": shape.n_kv_heads, "d_head": shape.d_head,
            "weights": _weights.PACKAGED[name].install if real else "built from config (seeded)",
        })
    return pd.DataFrame(rows)


def _go_offline() -> None:
    # Any accidental hub call must fail fast instead of hanging. huggingface_hub reads the
    # variable at import, so its constant is set too.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _load_packaged_hf(name: str, dtype: torch.dtype, use_converted: bool):
    """The HF model and tokenizer of a packaged GGUF.

    Dequantising the GGUF takes 10-30 s; the float32 result is saved once as safetensors
    in a folder named after the GGUF's sha256 and reloaded from there (well under a second
    for SmolLM2, same logits bitwise, checked by a test). The GGUF is hash-checked first at
    every load, so a changed file never reaches the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, entry = _weights.verified_gguf(name)
    converted = _weights.cache_dir() / f"{name}-{entry.sha256[:16]}"
    if use_converted and (converted / "model.safetensors").exists():
        tok = AutoTokenizer.from_pretrained(str(converted))
        hf = AutoModelForCausalLM.from_pretrained(str(converted), dtype=dtype,
                                                  attn_implementation="eager")
        return hf.eval(), tok, entry.label
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager")
    hf.config.architectures = [type(hf).__name__]  # GGUF configs carry none; Gemma 3 needs it
    if use_converted:
        _save_converted(hf, tok, converted)
    return hf.to(dtype).eval(), tok, entry.label


def _save_converted(hf, tok, folder) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    hf.hf_quantizer = None  # the weights are plain float32 tensors now
    hf.config.quantization_config = None
    hf.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(folder)  # only a complete folder is ever read


def load_model(name: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32,
               device: str = "cpu", seed: int = 0, use_converted: bool = True):
    """A TransformerBridge (with its tokenizer) for a packaged or tiny model, fully offline.

    Packaged weights are sha256-checked before they are read; use_converted=False reads
    the GGUF itself instead of the float32 copy saved at the first load. `seed` only
    affects tiny models.
    The bridge keeps its default numerics (no weight folding), so its logits equal HF's eager
    logits bitwise.
    """
    _check_name(name)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.float32, "
                         f"torch.bfloat16), got {dtype!r}")
    _go_offline()
    from transformer_lens.model_bridge import TransformerBridge

    if name in _weights.PACKAGED:
        hf, tok, label = _load_packaged_hf(name, dtype, use_converted)
    else:
        hf, tok = _tiny.build_tiny_hf(name, seed=seed, dtype=dtype)
        hf.config.architectures = [type(hf).__name__]
        label = f"kvdirect-interp/{name}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # boot chatter about optional features we do not use
        bridge = TransformerBridge.boot_transformers(
            label, hf_model=hf, tokenizer=tok, device=device, dtype=dtype)
    bridge.eval()
    return bridge
