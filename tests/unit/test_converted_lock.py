"""Concurrent first loads (two Jupyter kernels, say) of one packaged model: both succeed and
leave one valid converted entry. The packaged model is a stand-in whose "GGUF" is the tiny
Llama, converted slowly enough for the second process to arrive during the first's build,
on a slow disk (deleting an entry takes a second), so that a save that replaced an entry
while the other process reads it (the bug this guards against) fails every time."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from kvdirect_interp import _converted
from kvdirect_interp._tiny import build_tiny_hf

SHA = "ab" * 32
KEY = _converted.Key("stand-in", SHA, torch.float32)
TEXT = "the tin is in the shed"

LOADER = textwrap.dedent("""
    import shutil, sys, time
    from pathlib import Path
    import torch
    from kvdirect_interp import _converted, _weights, models
    from kvdirect_interp._tiny import build_tiny_hf

    work, me, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    key = _converted.Key("stand-in", {sha!r}, torch.float32)
    _weights.PACKAGED["stand-in"] = _weights.PackagedGGUF(
        "stand-in", "llama", "pip install stand-in", {sha!r}, lambda: None)

    def dequantise(name):
        with open(work / "builds", "a") as f:
            f.write(me + "\\n")
        time.sleep(1 if me == "a" else 3)  # slow conversions; b's ends after a's save
        return build_tiny_hf("tiny-llama")

    def slow_rmtree(path, *args, real=shutil.rmtree, **kwargs):
        real(path, *args, **kwargs)
        if Path(path).name.endswith("-float32"):  # a slow disk: deleting an entry takes
            time.sleep(1)  # a while, so a load meanwhile would find it gone

    models._dequantise = dequantise
    shutil.rmtree = slow_rmtree
    (work / ("ready-" + me)).touch()
    while not (work / "go").exists():  # both start loading at the same moment
        time.sleep(0.01)
    start = time.monotonic()
    if mode == "models":  # the loader's own sequence, as load_model runs it
        hf, tok, _ = models._load_packaged_hf("stand-in", torch.float32, True)
    else:  # load, build and save inside the entry's lock
        with _converted.building(key):
            found = _converted.load(key)
            if found is None:
                _converted.save(key, *dequantise("stand-in"))
                found = _converted.load(key)
        hf, tok = found
    (work / ("loaded-" + me)).touch()
    while True:  # warm loads (a kernel re-run) until the other process has loaded too
        assert _converted.load(key) is not None, "the entry vanished during a warm load"
        if all((work / ("loaded-" + p)).exists() for p in "ab"):
            break
        assert time.monotonic() < start + 240, "the other process never loaded"
    with torch.no_grad():
        logits = hf(torch.tensor([tok({text!r}).input_ids])).logits
    torch.save(logits, work / ("logits-" + me + ".pt"))
""").format(sha=SHA, text=TEXT)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVDIRECT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _race(work, mode):
    """Start two loader processes together; their (returncode, stderr) pairs."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOADER, str(work), me, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in ("a", "b")
    ]
    deadline = time.monotonic() + 300
    while not all((work / f"ready-{me}").exists() for me in "ab"):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (work / "go").touch()
    return [(p.communicate(timeout=300)[1], p.returncode)[::-1] for p in procs]


def _expected_logits():
    hf, tok = build_tiny_hf("tiny-llama")  # an entry reads back bitwise (test_converted)
    with torch.no_grad():
        return hf(torch.tensor([tok(TEXT).input_ids])).logits


@pytest.mark.parametrize("mode", ["models", "building"])
def test_concurrent_first_loads_both_succeed_with_one_entry(cache, tmp_path, mode):
    work = tmp_path / "work"
    work.mkdir()
    results = _race(work, mode)
    for rc, err in results:
        assert rc == 0, err[-3000:]
    assert _converted.problem(KEY) is None  # one valid entry ...
    siblings = {p.name for p in KEY.folder().parent.iterdir()} - {f"{KEY.folder().name}.lock"}
    assert siblings == {KEY.folder().name}  # ... and no temporary folder left
    a, b = (torch.load(work / f"logits-{me}.pt") for me in "ab")
    assert torch.equal(a, b) and torch.equal(a, _expected_logits())
    builds = (work / "builds").read_text().split()
    # models._load_packaged_hf builds under `building` too: the second process waited
    assert len(builds) == 1, builds
    assert sum("waiting for another process" in err for _, err in results) == 1


def test_save_keeps_a_valid_entry_saved_meanwhile(cache):
    hf, tok = build_tiny_hf("tiny-llama")
    _converted.save(KEY, hf, tok)
    manifest = (KEY.folder() / "manifest.json").read_bytes()
    inode = KEY.folder().stat().st_ino
    _converted.save(KEY, *build_tiny_hf("tiny-llama", seed=1))  # a late second builder
    assert KEY.folder().stat().st_ino == inode
    assert (KEY.folder() / "manifest.json").read_bytes() == manifest


def test_bad_entry_is_deleted_only_if_still_bad_under_the_lock(cache, monkeypatch):
    """A load that finds a corrupt entry while another process holds the lock (rebuilding it)
    waits, looks again, and uses the new entry instead of deleting it."""
    hf, tok = build_tiny_hf("tiny-llama")
    _converted.save(KEY, hf, tok)
    weights = KEY.folder() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    found_bad = threading.Event()
    read = _converted._read

    def spied(key):
        result = read(key)
        if result[1] is not None:
            found_bad.set()
        return result

    monkeypatch.setattr(_converted, "_read", spied)
    out = []
    lock = _converted._lock(KEY)
    lock.acquire()  # stands for the other process's lock (another thread cannot take it)
    try:
        waiter = threading.Thread(target=lambda: out.append(_converted.load(KEY)))
        waiter.start()
        assert found_bad.wait(60)
        time.sleep(0.2)
        assert waiter.is_alive()  # waiting for the lock
        _converted.save(KEY, hf, tok)  # the rebuild, under the lock held here
    finally:
        lock.release()
    waiter.join(60)
    assert out and out[0] is not None and _converted.problem(KEY) is None


def test_lock_is_reentrant_within_a_thread(cache):
    with _converted.building(KEY):
        assert _converted.load(KEY) is None
        _converted.save(KEY, *build_tiny_hf("tiny-llama"))
        assert _converted.load(KEY) is not None
