"""Reading a saved model folder back: transformers' own loaders, the faster readers, and the
checks that a faster reader gives exactly what transformers' loader gives.

`_converted.save` runs the checks once per entry and records the verdicts in the manifest;
warm loads use a fast reader only where its verdict was yes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS = "model.safetensors"


def auto_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    # add_bos_token=True is what TransformerBridge asks for: without it the bridge loads the
    # tokenizer a second time to set it
    return AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)


def tokenizer_from_file(folder: Path):
    """The saved tokenizer, its class built around tokenizer.json as `tokenizers` reads it.

    AutoTokenizer does just this for classes without an __init__ of their own. For the others
    (GemmaTokenizer, Qwen2Tokenizer) it parses tokenizer.json in Python, twice, and has the
    class rebuild its backend from the vocabulary and merges: 4-5 s here for Gemma 3's 262k
    tokens and 515k merges, against about 1.5 s for the Rust parser. The class's rebuilt
    backend can differ from the file's, hence `same_tokenizer`.
    Passing the file rather than a parsed `tokenizer_object` avoids a deep copy of it."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config = json.loads((folder / "tokenizer_config.json").read_text())
    cls = tokenizer_class_from_name(config.pop("tokenizer_class"))
    for flag in ("add_bos_token", "add_eos_token"):
        config.pop(flag, None)  # as AutoTokenizer does when there is a tokenizer.json
    template = folder / "chat_template.jinja"  # what save_pretrained writes the template to
    if template.exists():
        config["chat_template"] = template.read_text()
    return cls(
        tokenizer_file=str(folder / "tokenizer.json"),
        name_or_path=str(folder),
        add_bos_token=True,
        **config,
    )


_NOT_BEHAVIOUR = {"added_tokens_decoder", "is_local", "local_files_only", "name_or_path"}


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers behave alike: same class, same backend (which does all of the
    encoding and decoding, added tokens included) and same Python-side settings."""

    def behaviour(t):
        # init_kwargs is what save_pretrained writes and TransformerBridge reads back. Special
        # tokens in it are AddedTokens one way and strings the other, hence str(); a None is
        # the same as an absent argument; added tokens are in the backend already, and where
        # the files came from does not change how they tokenize.
        kwargs = {
            k: str(v) for k, v in t.init_kwargs.items() if v is not None and k not in _NOT_BEHAVIOUR
        }
        return (
            type(t),
            t.backend_tokenizer.to_str(),
            t.special_tokens_map,
            t.all_special_ids,
            t.padding_side,
            t.truncation_side,
            t.chat_template,
            t.model_max_length,
            t.add_bos_token,
            t.add_eos_token,
            t.clean_up_tokenization_spaces,
            t.split_special_tokens,
            t.model_input_names,
            kwargs,
        )

    return behaviour(a) == behaviour(b)


def auto_model(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype, attn_implementation="eager"
    ).eval()


def model_from_file(folder: Path, dtype: torch.dtype):
    """The saved model: built from its config without initialising weights, then given the
    saved tensors as they are (memory-mapped, as from_pretrained leaves them too).

    from_pretrained does this and more: on its first call in a process it compiles the
    weight-renaming rules of every architecture transformers knows (~0.5 s of a 0.7 s load
    here), none of which apply to a folder it wrote itself. Raises ValueError unless every
    parameter and buffer the file should fill came from the file (or is tied to one that
    did): an unfilled one would hold uninitialised memory."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(str(folder))
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    tensors = load_file(str(folder / WEIGHTS))
    result = model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    from_file = {t.data_ptr() for t in tensors.values()}
    unfilled = [name for name, t in model.state_dict().items() if t.data_ptr() not in from_file]
    if result.unexpected_keys or unfilled:
        raise ValueError(
            f"{folder / WEIGHTS} does not fill this model: unfilled {unfilled}, "
            f"unexpected {result.unexpected_keys}"
        )
    if (folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model.eval()


def _tensors(named) -> dict:
    return {name: (t.dtype, t.shape, t.requires_grad, t.detach()) for name, t in named}


def _ties(model) -> list[list[str]]:
    """Groups of parameter names that are one tensor (tied weights)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return sorted(groups.values())


def same_model(a, b) -> bool:
    """Whether two loaded models are the same: class, mode, configs, which weights are tied,
    and every parameter and buffer (persistent or not) in name, dtype, shape and bits."""
    if (type(a), a.training, a.config.to_dict(), a.generation_config.to_dict(), _ties(a)) != (
        type(b),
        b.training,
        b.config.to_dict(),
        b.generation_config.to_dict(),
        _ties(b),
    ):
        return False
    for named in ("named_parameters", "named_buffers"):
        ta = _tensors(getattr(a, named)(remove_duplicate=False))
        tb = _tensors(getattr(b, named)(remove_duplicate=False))
        if ta.keys() != tb.keys():
            return False
        for name, (dtype, shape, grad, t) in ta.items():
            if (dtype, shape, grad) != tb[name][:3] or not torch.equal(t, tb[name][3]):
                return False
    return True
