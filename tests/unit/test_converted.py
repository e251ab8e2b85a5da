"""The converted-weights cache: an entry is used only when complete, intact and made for the
same GGUF, dtype and versions; anything else is deleted and rebuilt, never used."""

import json
import warnings

import pytest
import torch
import xxhash
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, GemmaTokenizer, Qwen2Tokenizer

from kvdirect_interp import _converted, _readers
from kvdirect_interp._tiny import build_tiny_hf, byte_tokenizer
from tests.conftest import TINY, random_tokens

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


@pytest.mark.parametrize(
    "field, value",
    [("gguf_sha256", "cd" * 32), ("dtype", "float16"), ("format", 0), ("transformers", "4.0.0")],
)
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
CHAT = [
    {"role": "user", "content": "Hé,\u00a0 the\ttin?"},
    {"role": "assistant", "content": "e\u0301 in the  shed 🙂\n"},
]
TEXTS = ["the tin is in the shed", "  Hé,\u00a0é e\u0301\t\n🙂 ¿\u200b x  ", ""]


@pytest.mark.parametrize("make", [byte_tokenizer, _gemma_like, _qwen_like])
@pytest.mark.parametrize("fast_reader_works", [True, False])
def test_tokenizer_reads_back_as_autotokenizer_would(cache, monkeypatch, make, fast_reader_works):
    """An entry's tokenizer is what AutoTokenizer makes of the tokenizer saved plainly (for
    Qwen2's class, with the NFC normaliser the class adds back). The save stores that, and
    records whether tokenizers' own parser reads it back the same (3x faster); if not, or if
    that reader fails, warm loads go through AutoTokenizer."""
    tok = make()
    tok.chat_template = TEMPLATE
    plain = cache / "plain"
    tok.save_pretrained(str(plain))
    auto = AutoTokenizer.from_pretrained(str(plain), add_bos_token=True)
    if not fast_reader_works:

        def broken(folder):
            raise ValueError("not this one")

        monkeypatch.setattr(_readers, "tokenizer_from_file", broken)
    key = _converted.Key("tiny-llama", SHA, torch.float32)
    _converted.save(key, build_tiny_hf("tiny-llama")[0], tok)
    manifest = json.loads((key.folder() / "manifest.json").read_text())
    assert manifest["tokenizer_from_file"] is fast_reader_works
    _, loaded = _converted.load(key)
    assert type(loaded) is type(auto) and _readers.same_tokenizer(loaded, auto)
    assert loaded.add_bos_token and loaded.name_or_path == str(key.folder())
    assert loaded.chat_template == TEMPLATE
    for text in [*TEXTS, auto.apply_chat_template(CHAT, tokenize=False)]:
        assert loaded(text).input_ids == auto(text).input_ids, text
        assert loaded.decode(auto(text).input_ids) == auto.decode(auto(text).input_ids)
    assert loaded.apply_chat_template(CHAT) == auto.apply_chat_template(CHAT)
    if make is _qwen_like:  # the entry normalises as the class does, unlike the GGUF's backend
        assert loaded("e\u0301").input_ids != tok("e\u0301").input_ids


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_read_back_as_from_pretrained_would(cache, name, dtype):
    """The weights go straight into a model built from the saved config when the save found
    that the same as from_pretrained's model: every parameter and buffer bitwise, ties,
    configs, mode; so the logits are bitwise too. GPT-NeoX's files use the checkpoint's
    tensor names (embed_out, renamed lm_head by from_pretrained's rules), so the save finds
    the direct read incomplete and its entry is read by from_pretrained."""
    hf, tok = build_tiny_hf(name, dtype=dtype)
    key = _converted.Key(name, SHA, dtype)
    _converted.save(key, hf, tok)
    manifest = json.loads((key.folder() / "manifest.json").read_text())
    assert manifest["weights_from_file"] is (name != "tiny-neox")
    loaded, _ = _converted.load(key)
    auto = _readers.auto_model(key.folder(), dtype)
    assert _readers.same_model(loaded, auto) and not loaded.training
    toks = random_tokens(1, 12, seed=1)
    with torch.no_grad():
        assert torch.equal(loaded(toks).logits, auto(toks).logits)
        if dtype == torch.float32:  # hf.to(bfloat16) also casts the rotary tables it holds
            assert torch.equal(loaded(toks).logits, hf(toks).logits)


def test_same_model_sees_bits_ties_buffers_and_configs(cache):
    key, _ = _saved()
    folder = key.folder()
    fresh = lambda: _readers.model_from_file(folder, torch.float32)  # noqa: E731
    assert _readers.same_model(fresh(), fresh())
    changed = fresh()
    with torch.no_grad():
        p = next(changed.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(1e9))  # one ulp
    assert not _readers.same_model(changed, fresh())
    changed = fresh()
    name, buf = next(changed.named_buffers())
    changed.get_submodule(name.rsplit(".", 1)[0]).register_buffer(
        name.rsplit(".", 1)[1], buf.clone() * 2, persistent=False
    )
    assert not _readers.same_model(changed, fresh())
    tied = fresh()
    tied.lm_head.weight = tied.model.embed_tokens.weight
    untied = fresh()
    untied.lm_head.weight = torch.nn.Parameter(untied.model.embed_tokens.weight.detach().clone())
    assert not _readers.same_model(untied, tied)  # the same bits, but not one tensor
    changed = fresh()
    changed.config.rms_norm_eps *= 2
    assert not _readers.same_model(changed, fresh())
    assert not _readers.same_model(fresh().train(), fresh())


def test_weights_that_do_not_fill_the_model_are_refused(cache):
    """A tensor missing from the file would leave uninitialised memory in the model."""
    from safetensors.torch import load_file, save_file

    key, _ = _saved()
    path = key.folder() / "model.safetensors"
    tensors = load_file(str(path))
    dropped = "model.layers.0.mlp.up_proj.weight"
    save_file(
        {k: v.clone() for k, v in tensors.items() if k != dropped},
        str(path),
        metadata={"format": "pt"},
    )
    with pytest.raises(ValueError, match=dropped):
        _readers.model_from_file(key.folder(), torch.float32)


def test_fast_weights_off_falls_back_to_from_pretrained(cache, monkeypatch):
    def broken(folder, dtype):
        raise ValueError("not this one")

    monkeypatch.setattr(_readers, "model_from_file", broken)
    key, hf = _saved()
    assert json.loads((key.folder() / "manifest.json").read_text())["weights_from_file"] is False
    loaded, _ = _converted.load(key)  # never calls the broken reader
    toks = random_tokens(1, 12, seed=0)
    with torch.no_grad():
        assert torch.equal(loaded(toks).logits, hf(toks).logits)


def test_unparseable_corrupt_tokenizer_is_stale_not_an_error(cache):
    """The tokenizer is parsed while the digests are computed: a corrupt tokenizer.json that
    breaks the parser is reported as corrupt (and rebuilt), like any other corrupt file."""
    key, _ = _saved()
    (key.folder() / "tokenizer.json").write_text("{not json")
    _expect_rebuild(key, "tokenizer.json is corrupt")


def test_tokenizer_error_on_intact_files_is_raised(cache):
    key, _ = _saved()
    folder = key.folder()
    (folder / "tokenizer.json").write_text("{not json")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = _converted.file_digest(folder / "tokenizer.json")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="expected|key must be a string|EOF|line"):
        _converted.load(key)
    assert folder.exists()  # intact files are not deleted for an error that is not theirs


def test_pre_manifest_folders_are_removed_once_with_a_warning(cache):
    """The old layout, `<cache>/<name>-<sha256[:16]>` (and its `.tmp`), is deleted on the
    first load or save in a process, with a StaleConvertedWeights warning naming it; nothing
    else in the cache folder is touched."""
    from kvdirect_interp._weights import PACKAGED

    old = [
        cache / f"smollm2-135m-{PACKAGED['smollm2-135m'].sha256[:16]}",
        cache / "gemma3-270m-0123456789abcdef.tmp",
    ]
    for folder in old:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    kept = [
        cache / "qwen2.5-coder-0.5b-instruct.gguf",
        cache / "other-0123456789abcdef",
        cache / "smollm2-135m-not-a-digest",
        cache / "smollm2-135m-0123456789abcdef0",
    ]
    kept[0].write_bytes(b"gguf")
    for folder in kept[1:]:
        folder.mkdir()
    with pytest.warns(_converted.StaleConvertedWeights, match="removed 2 .*old layout"):
        key, _ = _saved()  # the first save in this cache folder removes them
    assert not any(folder.exists() for folder in old)
    assert all(path.exists() for path in kept) and _converted.problem(key) is None
    old[0].mkdir()  # not looked for again in this process
    with warnings.catch_warnings():
        warnings.simplefilter("error", _converted.StaleConvertedWeights)
        assert _converted.load(key) is not None
    assert old[0].exists()


def test_pre_manifest_removal_warns_naming_the_folders(cache):
    (cache / "qwen2.5-0.5b-0123456789abcdef").mkdir()
    with pytest.warns(
        _converted.StaleConvertedWeights,
        match=r"removed 1 .*old layout.*qwen2\.5-0\.5b-0123456789abcdef",
    ):
        assert _converted.load(_converted.Key("tiny-llama", SHA, torch.float32)) is None
    assert not (cache / "qwen2.5-0.5b-0123456789abcdef").exists()
