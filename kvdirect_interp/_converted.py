"""The converted-weights cache: a packaged GGUF, dequantised once, saved as safetensors.

Dequantising a GGUF takes 13-35 s; reading the saved tensors back takes about a second.
An entry is one folder per (model, GGUF sha256, dtype) in the user cache, holding what
`save_pretrained` writes for the model and its tokenizer plus `manifest.json`: the key it
was made for, the versions that made it, and an xxh3-128 digest of every file. An entry is
used only when all of those check out; otherwise it is deleted and rebuilt, never used.
xxh3 (several GB/s) detects a truncated or corrupted file without making a warm load pay
for a cryptographic hash of gigabytes; the sha256 that guards provenance is the GGUF's,
checked whenever the GGUF itself is read.

The tokenizer is read back the fast way (see `_tokenizer_from_file`) when the save checked
that this gives the same tokenizer as `AutoTokenizer`; the manifest records the verdict, so
it is checked again whenever transformers changes (the entry is then rebuilt).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
import xxhash

from ._weights import cache_dir, hex_digest

FORMAT = 2  # bump when the layout of an entry changes: older entries become stale
# 2: the manifest records whether the tokenizer can be read with `_tokenizer_from_file`
MANIFEST = "manifest.json"


class StaleConvertedWeights(UserWarning):
    """A saved entry was incomplete, corrupt or made for something else; it is rebuilt."""


@dataclass(frozen=True)
class Key:
    """What an entry was converted from and to."""

    name: str
    gguf_sha256: str
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def folder(self) -> Path:
        return cache_dir() / "converted" / f"{self.name}-{self.gguf_sha256[:16]}-{self.dtype_name}"

    def expected(self) -> dict:
        """The manifest fields an entry for this key must carry (besides the digests)."""
        return {"format": FORMAT, "name": self.name, "gguf_sha256": self.gguf_sha256,
                "dtype": self.dtype_name, "transformers": version("transformers")}


def file_digest(path: Path) -> str:
    return hex_digest(path, xxhash.xxh3_128())


def _check(key: Key) -> tuple[dict | None, str | None]:
    """(the manifest, None) if the entry for `key` can be used, else (None, why not)."""
    folder = key.folder()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "no entry" if not folder.exists() else "no manifest (an interrupted save?)"
    except (OSError, ValueError) as err:
        return None, f"unreadable manifest ({err})"
    for field, want in key.expected().items():
        if manifest.get(field) != want:
            return None, f"made for {field}={manifest.get(field)!r}, need {want!r}"
    files = manifest.get("files") or {}
    on_disk = {p.name for p in folder.iterdir()} - {MANIFEST}
    if set(files) != on_disk:
        return None, f"files {sorted(on_disk)} differ from the manifest's {sorted(files)}"
    for name, digest in files.items():
        if file_digest(folder / name) != digest:
            return None, f"{name} is corrupt (its xxh3-128 differs from the manifest's)"
    return manifest, None


def problem(key: Key) -> str | None:
    """Why the entry for `key` cannot be used, or None if it can."""
    return _check(key)[1]


def _auto_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    # add_bos_token=True is what TransformerBridge asks for: without it the bridge loads the
    # tokenizer a second time to set it
    return AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)


def _tokenizer_from_file(folder: Path):
    """The saved tokenizer, its class built around tokenizer.json as `tokenizers` reads it.

    AutoTokenizer does just this for classes without an __init__ of their own. For the others
    (GemmaTokenizer, Qwen2Tokenizer) it parses tokenizer.json in Python, twice, and has the
    class rebuild its backend from the vocabulary and merges: 4-5 s here for Gemma 3's 262k
    tokens and 515k merges, against about 1.5 s for the Rust parser. The class's rebuilt
    backend can differ from the file's, so `save` checks this path against AutoTokenizer's.
    Passing the file rather than a parsed `tokenizer_object` avoids a deep copy of it."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config = json.loads((folder / "tokenizer_config.json").read_text())
    cls = tokenizer_class_from_name(config.pop("tokenizer_class"))
    for flag in ("add_bos_token", "add_eos_token"):
        config.pop(flag, None)  # as AutoTokenizer does when there is a tokenizer.json
    template = folder / "chat_template.jinja"  # what save_pretrained writes the template to
    if template.exists():
        config["chat_template"] = template.read_text()
    return cls(tokenizer_file=str(folder / "tokenizer.json"), name_or_path=str(folder),
               add_bos_token=True, **config)


_NOT_BEHAVIOUR = {"added_tokens_decoder", "is_local", "local_files_only"}


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers behave alike: same class, same backend (which does all of the
    encoding and decoding, added tokens included) and same Python-side settings."""
    def behaviour(t):
        # init_kwargs is what save_pretrained writes and TransformerBridge reads back. Special
        # tokens in it are AddedTokens one way and strings the other, hence str(); a None is
        # the same as an absent argument; added tokens are in the backend already, and where
        # the files came from does not change how they tokenize.
        kwargs = {k: str(v) for k, v in t.init_kwargs.items()
                  if v is not None and k not in _NOT_BEHAVIOUR}
        return (type(t), t.backend_tokenizer.to_str(), t.special_tokens_map, t.all_special_ids,
                t.padding_side, t.truncation_side, t.chat_template, t.model_max_length,
                t.add_bos_token, t.add_eos_token, t.clean_up_tokenization_spaces,
                t.split_special_tokens, t.model_input_names, kwargs)
    return behaviour(a) == behaviour(b)


def load(key: Key):
    """(hf_model, tokenizer) from a valid entry, or None (a bad entry is deleted first)."""
    from transformers import AutoModelForCausalLM

    folder = key.folder()
    if not folder.exists():
        return None  # never saved: nothing to warn about
    manifest, why = _check(key)
    if why is not None:
        warnings.warn(f"converted weights at {folder} not used: {why}; rebuilding",
                      StaleConvertedWeights, stacklevel=3)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    fast = manifest.get("tokenizer_from_file") is True
    tok = (_tokenizer_from_file if fast else _auto_tokenizer)(folder)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=key.dtype,
                                              attn_implementation="eager")
    return hf.eval(), tok


def save(key: Key, hf, tok) -> None:
    """Write an entry for `key`; it becomes visible only once complete (atomic rename)."""
    folder = key.folder()
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    # A few seconds once, so that every warm load can take the fast path when it is exact
    try:
        from_file = same_tokenizer(_tokenizer_from_file(tmp), _auto_tokenizer(tmp))
    except Exception:  # e.g. a class that needs more than the file: just not the fast path
        from_file = False
    files = {p.name: file_digest(p) for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps(
        {**key.expected(), "tokenizer_from_file": from_file, "files": files}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
