"""A model the user brings: a local Hugging Face folder or an already-loaded HF model.

Both become (hf_model, tokenizer, label) for models.load_model, which wraps them with
TransformerBridge.boot_transformers exactly as it wraps the packaged models. Nothing here
reaches a hub: files are read with local_files_only=True, under HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

ACCEPTED = (
    "a packaged or tiny model name (see list_models()), a local Hugging Face folder "
    "(config.json + *.safetensors + tokenizer files) of a decoder-only causal LM, or a "
    "loaded transformers PreTrainedModel of one"
)
# files a tokenizer can be rebuilt from offline (a fast tokenizer's json, or a slow one's vocab)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def is_folder(name: Any) -> bool:
    """True for a str or path naming an existing directory."""
    return isinstance(name, str | os.PathLike) and Path(name).is_dir()


def _why_not_decoder(architecture: str, config: Any) -> str | None:
    """Why an HF architecture cannot be wrapped here, or None when it can."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return f"{architecture} is an encoder-decoder model, not a decoder-only causal LM"
    if architecture not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return f"{architecture} is not a causal LM (e.g. an encoder such as BERT)"
    if architecture not in SUPPORTED_ARCHITECTURES:
        return f"{architecture} has no TransformerLens 4.3 architecture adapter"
    return None


def _tokenizer_in(folder: Path):
    """The tokenizer saved in `folder`, or None when it holds no tokenizer files."""
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def from_folder(path: str | os.PathLike, tokenizer: Any, dtype: torch.dtype | None):
    """(hf_model, tokenizer, label) from a local folder, checked before any weights load;
    the tokenizer is the one given, else the folder's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if tokenizer is None and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        missing.append(f"tokenizer files (one of {', '.join(_TOKENIZER_FILES)})")
    if missing:
        raise ValueError(
            f"model folder {str(folder)!r} lacks {', '.join(missing)}; load_model accepts "
            f"{ACCEPTED}"
        )
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    architecture = (config.architectures or [type(config).__name__])[0]
    why = _why_not_decoder(architecture, config)
    if why is not None:
        raise ValueError(f"model folder {str(folder)!r}: {why}; load_model accepts {ACCEPTED}")
    hf = AutoModelForCausalLM.from_pretrained(
        str(folder),
        local_files_only=True,
        dtype=dtype or torch.float32,
        attn_implementation="eager",  # the bridge re-implements eager attention
    )
    return hf, tokenizer if tokenizer is not None else _tokenizer_in(folder), str(folder)


def from_object(hf: Any, tokenizer: Any, dtype: torch.dtype | None):
    """(hf_model, tokenizer, label) for a loaded PreTrainedModel; the tokenizer is the one
    given, else one saved in the folder the model was loaded from."""
    from transformers import PreTrainedModel

    if not isinstance(hf, PreTrainedModel):
        raise TypeError(f"load_model got a {type(hf).__name__}; it accepts {ACCEPTED}")
    why = _why_not_decoder(type(hf).__name__, hf.config)
    if why is not None:
        raise ValueError(f"{why}; load_model accepts {ACCEPTED}")
    source = getattr(hf, "name_or_path", "") or ""
    if tokenizer is None and is_folder(source):
        tokenizer = _tokenizer_in(Path(source))
    if tokenizer is None:
        raise ValueError(
            f"no tokenizer for this {type(hf).__name__}: pass tokenizer=..., or load the "
            "model from a folder that holds its tokenizer files"
        )
    if dtype is not None and hf.dtype != dtype:
        hf = hf.to(dtype)
    # the bridge reimplements eager attention; an sdpa module would give other bits
    hf.set_attn_implementation("eager")
    return hf, tokenizer, source or type(hf).__name__
