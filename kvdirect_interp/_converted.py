"""The converted-weights cache: a packaged GGUF, dequantised once, saved as safetensors.

Dequantising a GGUF takes 13-35 s; reading the saved entry back takes well under a second
plus the tokenizer parse (about 1.5 s for Gemma 3's 262k-token vocabulary).
An entry is one folder per (model, GGUF sha256, dtype) in the user cache, holding what
`save_pretrained` writes for the model and its tokenizer plus `manifest.json`: the key it
was made for, the versions that made it, and an xxh3-128 digest of every file. An entry is
used only when all of those check out; otherwise it is deleted and rebuilt, never used.
xxh3 (several GB/s) detects a truncated or corrupted file without making a warm load pay
for a cryptographic hash of gigabytes; the sha256 that guards provenance is the GGUF's,
checked whenever the GGUF itself is read.

Both halves are read back the fast way where the save found it exact (see `_readers`):
the tokenizer by `tokenizers`' own parser, the weights straight into a model built from its
config. The manifest records each verdict, so they are checked again whenever transformers
changes (the entry is then rebuilt). A warm load hashes the files while the tokenizer is
parsed (xxhash releases the GIL), and uses nothing it read until every digest matched.

Several processes (two Jupyter kernels, say) may load the same model at once. Every change
to an entry (a save, the deletion of a bad one) happens under a lock file next to it, after
checking again under the lock; `building(key)` holds that lock across a load, build and save,
so the second process waits for the first's entry instead of converting it too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from glob import escape as glob_escape
from importlib.metadata import version
from pathlib import Path

import torch
import xxhash
from filelock import FileLock, Timeout

from . import _readers
from ._weights import PACKAGED, cache_dir, hex_digest

FORMAT = 3  # bump when the layout of an entry changes: older entries become stale
# 2: the manifest records whether the tokenizer can be read with `tokenizer_from_file`
# 3: ... and whether the weights can be read with `model_from_file`; the tokenizer is
#    saved as AutoTokenizer reads it back
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
        return {
            "format": FORMAT,
            "name": self.name,
            "gguf_sha256": self.gguf_sha256,
            "dtype": self.dtype_name,
            "transformers": version("transformers"),
        }


def file_digest(path: Path) -> str:
    return hex_digest(path, xxhash.xxh3_128())


def _check_manifest(key: Key) -> tuple[dict | None, str | None]:
    """(the manifest, None) if the entry's manifest fits `key` and lists exactly the files
    on disk, else (None, why not). The files' digests are not checked here."""
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
    return manifest, None


def _corrupt_file(folder: Path, files: dict[str, str]) -> str | None:
    """Why a file's digest differs from its manifest's, or None if all match."""
    for name, digest in files.items():
        if file_digest(folder / name) != digest:
            return f"{name} is corrupt (its xxh3-128 differs from the manifest's)"
    return None


def _check(key: Key) -> tuple[dict | None, str | None]:
    """(the manifest, None) if the entry for `key` can be used, else (None, why not)."""
    manifest, why = _check_manifest(key)
    if why is None:
        why = _corrupt_file(key.folder(), manifest["files"])
    return (manifest, None) if why is None else (None, why)


def problem(key: Key) -> str | None:
    """Why the entry for `key` cannot be used, or None if it can."""
    return _check(key)[1]


def _lock(key: Key) -> FileLock:
    """The entry's lock: `<entry>.lock` next to its folder. One object per path in a process,
    so that a thread holding it can take it again (a load inside `building`)."""
    folder = key.folder()
    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(folder.with_name(f"{folder.name}.lock"), is_singleton=True)


@contextmanager
def building(key: Key):
    """Hold the entry's lock for a load, the build it may need, and the save: another
    process loading the same key meanwhile waits (with a message on stderr), then finds
    the finished entry. Taking the lock is instant unless another process holds it."""
    lock = _lock(key)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(
            f"kvdirect_interp: waiting for another process to finish the converted weights "
            f"of {key.name} ({key.dtype_name}) at {key.folder()}",
            file=sys.stderr,
            flush=True,
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _read(key: Key):
    """((hf_model, tokenizer) or None, why the entry cannot be used or None)."""
    folder = key.folder()
    if not folder.exists():
        return None, None  # never saved: nothing to warn about
    manifest, why = _check_manifest(key)
    tok = failure = None
    if why is None:
        # the digests (~0.3 s per GB) are computed while the tokenizer is parsed (~1.5 s
        # for Gemma 3's); a corrupt file fails its digest whatever the parser made of it
        with ThreadPoolExecutor(1) as pool:
            digests = pool.submit(_corrupt_file, folder, manifest["files"])
            read = (
                _readers.tokenizer_from_file
                if manifest["tokenizer_from_file"]
                else _readers.auto_tokenizer
            )
            try:
                tok = read(folder)
            except Exception as err:  # reported below only if the files are intact
                failure = err
            why = digests.result()
    if why is not None:
        return None, why
    if failure is not None:
        raise failure
    read = _readers.model_from_file if manifest["weights_from_file"] else _readers.auto_model
    return (read(folder, key.dtype), tok), None


def load(key: Key):
    """(hf_model, tokenizer) from a valid entry, or None (a bad entry is deleted first)."""
    remove_pre_manifest_entries()
    found, why = _read(key)
    if why is None:
        return found
    with _lock(key):  # delete only what is still bad under the lock: another process may
        found, why = _read(key)  # have just replaced it with a good entry
        if why is None:
            return found
        folder = key.folder()
        warnings.warn(
            f"converted weights at {folder} not used: {why}; rebuilding",
            StaleConvertedWeights,
            stacklevel=3,
        )
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _verdict(fast, auto, same) -> bool:
    """Whether the fast reader gives what transformers' loader gives (False if it fails)."""
    try:
        return same(fast(), auto())
    except Exception:  # e.g. a class that needs more than the file: just not the fast path
        return False


def save(key: Key, hf, tok) -> None:
    """Write an entry for `key`; it becomes visible only once complete (atomic rename).
    Done under the entry's lock; a valid entry that another process saved meanwhile is
    kept (it was made from the same GGUF, dtype and versions), not replaced."""
    remove_pre_manifest_entries()
    with _lock(key):
        if problem(key) is None:
            return
        folder = key.folder()
        for stale in folder.parent.glob(f"{glob_escape(folder.name)}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted save
        _write(key, hf, tok, folder, folder.with_name(f"{folder.name}.tmp{os.getpid()}"))


def _write(key: Key, hf, tok, folder: Path, tmp: Path) -> None:
    hf.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    # Some classes rebuild their backend when read (Qwen2's adds the NFC normaliser that its
    # GGUF lacks): save what a reader gets, so that the file alone gives it
    auto = _readers.auto_tokenizer(tmp)
    if not _readers.same_tokenizer(auto, tok):
        auto.save_pretrained(str(tmp))
        auto = _readers.auto_tokenizer(tmp)  # what the files now give
    # A few seconds once, so that every warm load can take the fast paths where exact
    verdicts = {
        "tokenizer_from_file": _verdict(
            lambda: _readers.tokenizer_from_file(tmp), lambda: auto, _readers.same_tokenizer
        ),
        "weights_from_file": _verdict(
            lambda: _readers.model_from_file(tmp, key.dtype),
            lambda: _readers.auto_model(tmp, key.dtype),
            _readers.same_model,
        ),
    }
    files = {p.name: file_digest(p) for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(
        json.dumps({**key.expected(), **verdicts, "files": files}, indent=1)
    )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


# Before manifests (before commit b3eea08), an entry was `<cache>/<name>-<sha256[:16]>`, a
# float32 folder with no manifest, read if its model.safetensors existed; never used now.
_PRE_MANIFEST = re.compile(r"(?P<name>.+)-[0-9a-f]{16}(\.tmp)?")
_swept: set[Path] = set()


def remove_pre_manifest_entries() -> list[Path]:
    """Delete, once per cache folder and process, the entries of the old layout, warning
    (StaleConvertedWeights) with what was removed; returns the removed folders."""
    root = cache_dir().resolve()
    if root in _swept:
        return []
    _swept.add(root)
    old = sorted(
        p
        for p in root.iterdir()
        if p.is_dir()
        and not p.is_symlink()
        and (m := _PRE_MANIFEST.fullmatch(p.name))
        and m["name"] in PACKAGED
    )
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    if old:
        warnings.warn(
            f"removed {len(old)} converted-weights folder(s) of the old layout "
            f"(before manifests) from {root}: {', '.join(p.name for p in old)}; "
            f"entries now live in {root / 'converted'}",
            StaleConvertedWeights,
            stacklevel=3,
        )
    return old
