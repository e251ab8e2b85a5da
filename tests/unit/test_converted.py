"""The converted-weights cache: an entry is used only when complete, intact and made for the
same GGUF, dtype and versions; anything else is deleted and rebuilt, never used."""

import json
import warnings

import pytest
import torch
import xxhash
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, GemmaTokenizer, Qwen2Tokenizer

from kvdirect_interp import _converted
from kvdirect_interp._tiny import build_tiny_hf, byte_tokenizer
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


def test_missing_entry_is_not_stale(cache):
    key = _converted.Key("tiny-llama", SHA, torch.float32)
    assert _converted.problem(key) == "no entry"
    with warnings.catch_warnings():
        warnings.simplefilter("error", _converted.StaleConvertedWeights)
        assert _converted.load(key) is None


def test_file_digest_is_xxh3_128(tmp_path):
    path = tmp_path / "file"
    for data in (b"", bytes(range(256)) * 1000):  # an empty file cannot be memory-mapped
        path.write_bytes(data)
        assert _converted.file_digest(path) == xxhash.xxh3_128(data).hexdigest()


def _gemma_like():
    """A small GemmaTokenizer: like Gemma 3's, its class rebuilds the backend it saved."""
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})  # byte fallback
    for ch in "▁abcdehilnorst":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n")]
    vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
    return GemmaTokenizer(vocab=vocab, merges=merges)


def _qwen_like():
    """A byte-level Qwen2Tokenizer whose backend lacks the NFC normalizer its class adds back
    on reload, as the packaged Qwen's does (the GGUF conversion drops it)."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], bos_token="<|endoftext|>")
    tok.backend_tokenizer.normalizer = None
    return tok


TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
CHAT = [{"role": "user", "content": "Hé,\u00a0 the\ttin?"},
        {"role": "assistant", "content": "e\u0301 in the  shed 🙂\n"}]
TEXTS = ["the tin is in the shed", "  Hé,\u00a0é e\u0301\t\n🙂 ¿\u200b x  ", ""]


@pytest.mark.parametrize("make, from_file", [(byte_tokenizer, True), (_gemma_like, True),
                                             (_qwen_like, False)])
def test_tokenizer_reads_back_as_autotokenizer_would(cache, make, from_file):
    """The saved tokenizer is read back through tokenizers' own parser when the save found
    that equal to what AutoTokenizer gives (it is 3x faster), else through AutoTokenizer."""
    tok = make()
    tok.chat_template = TEMPLATE
    key = _converted.Key("tiny-llama", SHA, torch.float32)
    _converted.save(key, build_tiny_hf("tiny-llama")[0], tok)
    manifest = json.loads((key.folder() / "manifest.json").read_text())
    assert manifest["tokenizer_from_file"] is from_file
    _, loaded = _converted.load(key)
    auto = AutoTokenizer.from_pretrained(str(key.folder()), add_bos_token=True)
    assert type(loaded) is type(auto) and _converted.same_tokenizer(loaded, auto)
    assert loaded.add_bos_token and loaded.name_or_path == str(key.folder())
    assert loaded.chat_template == TEMPLATE
    for text in [*TEXTS, auto.apply_chat_template(CHAT, tokenize=False)]:
        assert loaded(text).input_ids == auto(text).input_ids, text
        assert loaded.decode(auto(text).input_ids) == auto.decode(auto(text).input_ids)
    assert loaded.apply_chat_template(CHAT) == auto.apply_chat_template(CHAT)
    if not from_file:  # what the check guards against: the file alone would not normalise
        fast = _converted._tokenizer_from_file(key.folder())
        assert fast("e\u0301").input_ids != auto("e\u0301").input_ids
