"""The converted-weights cache: an entry is used only when complete, intact and made for the
same GGUF, dtype and versions; anything else is deleted and rebuilt, never used."""

import json

import pytest
import torch

from kvdirect_interp import _converted
from kvdirect_interp._tiny import build_tiny_hf
from tests.conftest import random_tokens

SHA = "ab" * 32


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVDIRECT_CACHE", str(tmp_path))
    return tmp_path


def _saved(dtype=torch.float32):
    hf, tok = build_tiny_hf("tiny-llama", dtype=dtype)
    key = _converted.Key("tiny-llama", SHA, dtype)
    _converted.save(key, hf, tok)
    return key, hf


def test_round_trip_is_bitwise(cache):
    key, hf = _saved()
    assert _converted.problem(key) is None
    loaded, tok = _converted.load(key)
    toks = random_tokens(1, 12, seed=0)
    with torch.no_grad():
        assert torch.equal(loaded(toks).logits, hf(toks).logits)
    original = build_tiny_hf("tiny-llama")[1]
    assert tok("Hé, 42!").input_ids == original("Hé, 42!").input_ids


def test_key_names_sha_and_dtype(cache):
    k32, _ = _saved(torch.float32)
    k16, hf16 = _saved(torch.bfloat16)
    assert k32.folder() != k16.folder() and "bfloat16" in k16.folder().name
    loaded, _ = _converted.load(k16)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert _converted.load(_converted.Key("tiny-llama", "cd" * 32, torch.float32)) is None


def _expect_rebuild(key, match):
    assert match in _converted.problem(key)
    with pytest.warns(_converted.StaleConvertedWeights, match=match):
        assert _converted.load(key) is None
    assert not key.folder().exists()  # deleted, so the next load rebuilds it


def test_corrupt_file_is_detected(cache):
    key, _ = _saved()
    weights = key.folder() / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the tensor data
    weights.write_bytes(bytes(data))
    _expect_rebuild(key, "model.safetensors is corrupt")


def test_truncated_file_is_detected(cache):
    key, _ = _saved()
    weights = key.folder() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _expect_rebuild(key, "model.safetensors is corrupt")


def test_missing_or_extra_file_is_detected(cache):
    key, _ = _saved()
    (key.folder() / "tokenizer.json").unlink()
    _expect_rebuild(key, "differ from the manifest")
    key, _ = _saved()
    (key.folder() / "stray.bin").write_bytes(b"x")
    _expect_rebuild(key, "differ from the manifest")


def test_interrupted_save_is_detected(cache):
    key, _ = _saved()
    (key.folder() / "manifest.json").unlink()
    _expect_rebuild(key, "no manifest")
    key, _ = _saved()
    (key.folder() / "manifest.json").write_text("{not json")
    _expect_rebuild(key, "unreadable manifest")


@pytest.mark.parametrize("field, value", [("gguf_sha256", "cd" * 32), ("dtype", "float16"),
                                          ("format", 0), ("transformers", "4.0.0")])
def test_stale_entry_is_detected(cache, field, value):
    key, _ = _saved()
    path = key.folder() / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[field] = value
    path.write_text(json.dumps(manifest))
    _expect_rebuild(key, f"made for {field}=")
