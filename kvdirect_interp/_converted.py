"""The converted-weights cache: a packaged GGUF, dequantised once, saved as safetensors.

Dequantising a GGUF takes 13-35 s; reading the saved tensors back takes about a second.
An entry is one folder per (model, GGUF sha256, dtype) in the user cache, holding what
`save_pretrained` writes for the model and its tokenizer plus `manifest.json`: the key it
was made for, the versions that made it, and an xxh3-128 digest of every file. An entry is
used only when all of those check out; otherwise it is deleted and rebuilt, never used.
xxh3 (several GB/s) detects a truncated or corrupted file without making a warm load pay
for a cryptographic hash of gigabytes; the sha256 that guards provenance is the GGUF's,
checked whenever the GGUF itself is read.
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

FORMAT = 1  # bump when the layout of an entry changes: older entries become stale
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


def problem(key: Key) -> str | None:
    """Why the entry for `key` cannot be used, or None if it can."""
    folder = key.folder()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no entry" if not folder.exists() else "no manifest (an interrupted save?)"
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    for field, want in key.expected().items():
        if manifest.get(field) != want:
            return f"made for {field}={manifest.get(field)!r}, need {want!r}"
    files = manifest.get("files") or {}
    on_disk = {p.name for p in folder.iterdir()} - {MANIFEST}
    if set(files) != on_disk:
        return f"files {sorted(on_disk)} differ from the manifest's {sorted(files)}"
    for name, digest in files.items():
        if file_digest(folder / name) != digest:
            return f"{name} is corrupt (its xxh3-128 differs from the manifest's)"
    return None


def load(key: Key):
    """(hf_model, tokenizer) from a valid entry, or None (a bad entry is deleted first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    why = problem(key)
    if why is not None:
        if why != "no entry":
            warnings.warn(f"converted weights at {key.folder()} not used: {why}; rebuilding",
                          StaleConvertedWeights, stacklevel=3)
            shutil.rmtree(key.folder(), ignore_errors=True)
        return None
    folder = str(key.folder())
    # add_bos_token=True is what TransformerBridge asks for: without it the bridge loads the
    # tokenizer a second time to set it (7.5 s for Gemma 3's 262k vocabulary)
    tok = AutoTokenizer.from_pretrained(folder, add_bos_token=True)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=key.dtype, attn_implementation="eager")
    return hf.eval(), tok


def save(key: Key, hf, tok) -> None:
    """Write an entry for `key`; it becomes visible only once complete (atomic rename)."""
    folder = key.folder()
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    files = {p.name: file_digest(p) for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({**key.expected(), "files": files}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
