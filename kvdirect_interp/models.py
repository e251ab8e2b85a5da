"""Models: packaged GGUF weights, tiny random configs, or the user's own HF folder or model
-> HF model -> TransformerBridge."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from . import _converted, _tiny, _user_models, _weights

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

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


# Other names load_model accepts for a packaged model. "qwen2.5-0.5b" is the name the stored
# results use; the checkpoint is Qwen2.5-Coder-0.5B-Instruct, which this names honestly.
ALIASES = {"qwen2.5-coder-0.5b": "qwen2.5-0.5b"}


def model_names() -> list[str]:
    """The names of every packaged and tiny model (aliases not included: see ALIASES)."""
    return [*_weights.PACKAGED, *_tiny.TINY_CONFIGS]


def canonical(name: Any) -> Any:
    """The model name `name` stands for (an alias resolved; anything else unchanged)."""
    return ALIASES.get(name, name) if isinstance(name, str) else name


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or name not in model_names():
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(model_names())} (aliases: "
            f"{', '.join(ALIASES)}); "
            f"load_model also accepts {_user_models.ACCEPTED.split(', ', 1)[1]}"
        )


def _tiny_shape(name: str) -> ModelShape:
    family, make_config = _tiny.TINY_CONFIGS[name]
    c = make_config()
    n_heads = c.num_attention_heads
    d_model = c.hidden_size
    return ModelShape(
        family,
        c.num_hidden_layers,
        d_model,
        n_heads,
        getattr(c, "num_key_value_heads", None) or n_heads,
        getattr(c, "head_dim", None) or d_model // n_heads,
    )


def list_models() -> pd.DataFrame:
    """Every model name load_model accepts, with its family, attention shape, weights and
    other names (`aliases`)."""
    rows = []
    for name in model_names():
        real = name in _weights.PACKAGED
        shape = _REAL_SHAPES[name] if real else _tiny_shape(name)
        rows.append(
            {
                "name": name,
                "kind": "packaged" if real else "tiny random",
                "family": shape.family,
                "n_layers": shape.n_layers,
                "d_model": shape.d_model,
                "n_heads": shape.n_heads,
                "n_kv_heads": shape.n_kv_heads,
                "d_head": shape.d_head,
                "weights": _weights.PACKAGED[name].install
                if real
                else "built from config (seeded)",
                "aliases": ", ".join(a for a, n in ALIASES.items() if n == name),
            }
        )
    return pd.DataFrame(rows)


def _go_offline() -> None:
    # Any accidental hub call must fail fast instead of hanging. huggingface_hub reads the
    # variable at import, so its constant is set too.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _dequantise(name: str):
    """(hf_model in float32, tokenizer) read from the packaged GGUF, after its sha256 check."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = _weights.verified_gguf(name)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    hf.config.architectures = [type(hf).__name__]  # GGUF configs carry none; Gemma 3 needs it
    hf.hf_quantizer = None  # the weights are plain float tensors now
    hf.config.quantization_config = None
    return hf, tok


def _load_packaged_hf(name: str, dtype: torch.dtype, use_converted: bool):
    """The HF model and tokenizer of a packaged GGUF, and its label.

    Dequantising the GGUF takes 13-35 s, so the result is saved once per dtype (see
    _converted.py) and later loads read that entry (about a second, same logits bitwise,
    checked by a test). A new dtype's entry is made from the float32 entry when one exists."""
    entry = _weights.PACKAGED[name]
    if not use_converted:
        hf, tok = _dequantise(name)
        return hf.to(dtype).eval(), tok, entry.label
    key = _converted.Key(name, entry.sha256, dtype)
    with _converted.building(key):  # a second process waits for the first one's entry
        found = _converted.load(key)
        if found is None:
            source = (
                None
                if dtype == torch.float32
                else _converted.load(_converted.Key(name, entry.sha256, torch.float32))
            )
            hf, tok = source if source is not None else _dequantise(name)
            _converted.save(key, hf.to(dtype), tok)
            # read back, so the first load gives what every later one will: the saved tokenizer
            # can differ from the GGUF's (Qwen2's class adds an NFC normaliser the GGUF lacks)
            found = _converted.load(key)
    return *found, entry.label


_CONVERT = (
    "import sys, torch; from kvdirect_interp.models import load_model; "
    "load_model(sys.argv[1], dtype=getattr(torch, sys.argv[2]))"
)


def convert_apart(name: str, dtype: torch.dtype = torch.float32) -> bool:
    """Make a packaged model's converted-weights entry for `dtype` in a child process, if
    it has none that can be used; True if it made one. A later load_model in this process
    then reads the entry. Why: dequantising a GGUF takes heap beyond the model (about
    1.5 GB for Qwen2.5-0.5B) that the allocator keeps resident after it is freed, so a
    process that converted shows that much more RSS for the rest of its life. Measuring
    RSS (the study's claim 4) needs a process whose RSS does not depend on that. Other
    names (tiny models, folders) have nothing to convert: False."""
    if not isinstance(name, str) or name not in _weights.PACKAGED:
        return False
    key = _converted.Key(name, _weights.PACKAGED[name].sha256, dtype)
    if _converted.problem(key) is None:
        return False
    subprocess.run([sys.executable, "-c", _CONVERT, name, key.dtype_name], check=True)
    return True


def load_model(
    name: Any = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    seed: int = 0,
    use_converted: bool = True,
    tokenizer: Any = None,
) -> TransformerBridge:
    """A TransformerBridge (with its tokenizer), fully offline, for:

    - a packaged or tiny model name (list_models());
    - a local Hugging Face folder (config.json, *.safetensors, tokenizer files) of a
      decoder-only causal LM that TransformerLens supports;
    - a loaded transformers PreTrainedModel of one, with `tokenizer` or a tokenizer saved in
      the folder it was loaded from. The boot rewires that model in place: compute any HF
      reference outputs before calling this.

    dtype: None is float32, except for a loaded model, which keeps its own dtype. `tokenizer`
    replaces a folder's tokenizer. Packaged weights are sha256-checked whenever the GGUF is
    read. The first load of each dtype saves the converted tensors, keyed by the recorded
    sha256 and the dtype; later loads read them (checked against their manifest, rebuilt if
    stale or corrupt). use_converted=False reads the GGUF every time (and uses the GGUF's
    tokenizer, which for Qwen2.5 lacks the NFC normaliser the saved one has). `seed` only
    affects tiny models. The bridge keeps its default numerics (no weight folding), so its
    logits equal HF's eager logits bitwise.
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(
            f"dtype must be a floating torch.dtype (e.g. torch.float32, "
            f"torch.bfloat16), got {dtype!r}"
        )
    name = canonical(name)
    loaded = not isinstance(name, str | os.PathLike)  # a model object (checked there)
    folder = not loaded and name not in model_names() and _user_models.is_folder(name)
    if not (loaded or folder):
        _check_name(name)
    _go_offline()
    from transformer_lens.model_bridge import TransformerBridge

    if loaded:
        hf, tok, label = _user_models.from_object(name, tokenizer, dtype)
    elif folder:
        hf, tok, label = _user_models.from_folder(name, tokenizer, dtype)
    elif name in _weights.PACKAGED:
        hf, tok, label = _load_packaged_hf(name, dtype or torch.float32, use_converted)
    else:
        hf, tok = _tiny.build_tiny_hf(name, seed=seed, dtype=dtype or torch.float32)
        label = f"kvdirect-interp/{name}"
    hf.config.architectures = [type(hf).__name__]  # the bridge picks its adapter by it
    # The boot gives its wrappers the HF model's mode, so an HF model in eval mode makes a
    # bridge in eval mode without a second walk over the ~3,000 modules (0.1-0.2 s)
    hf.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # boot chatter about optional features we do not use
        bridge = TransformerBridge.boot_transformers(
            label, hf_model=hf, tokenizer=tok, device=device, dtype=hf.dtype
        )
    return bridge
