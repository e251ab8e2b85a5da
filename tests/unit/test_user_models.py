"""Any model the user brings: a local HF folder, a loaded HF model, or a bridge booted by hand."""

import warnings

import pytest
import torch
import transformers

from kvdirect_interp import (
    KVDirect,
    capture_residuals,
    generate,
    load_model,
    patch_residual,
    patch_sweep,
    rebuild_kv,
    reconstruction_report,
)
from kvdirect_interp._tiny import build_tiny_hf, byte_tokenizer
from kvdirect_interp.hooks import run_and_capture
from tests.fixtures import random_tokens


def _save(folder, hf, tok=None):
    hf.save_pretrained(folder)  # safetensors by default
    if tok is not None:
        tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    hf, tok = build_tiny_hf("tiny-llama", seed=3)
    return _save(tmp_path_factory.mktemp("llama"), hf, tok)


def _hf_logits(hf, toks):
    with torch.no_grad():
        return hf(toks).logits


def test_a_local_folder_loads_offline_with_hfs_logits(llama_folder):
    toks = random_tokens(1, 16, seed=0)
    ref = _hf_logits(
        transformers.AutoModelForCausalLM.from_pretrained(
            llama_folder, local_files_only=True, attn_implementation="eager"
        ).eval(),
        toks,
    )
    model = load_model(str(llama_folder))
    with torch.no_grad():
        assert torch.equal(model(toks), ref)
    # the folder's tokenizer came along: same ids as the byte tokenizer it was saved from
    assert model.tokenizer("hi there")["input_ids"] == byte_tokenizer()("hi there")["input_ids"]
    assert load_model(llama_folder).cfg.n_layers == 3  # a Path works as well as a str


def test_a_loaded_model_is_wrapped_with_its_tokenizer(llama_folder):
    toks = random_tokens(1, 12, seed=1)
    hf, tok = build_tiny_hf("tiny-qwen2", seed=4)
    ref = _hf_logits(hf, toks)  # before the boot: it rewires the HF model in place
    model = load_model(hf, tokenizer=tok)
    with torch.no_grad():
        assert torch.equal(model(toks), ref)
    # no tokenizer given: the one saved next to the weights the model was loaded from
    again = transformers.AutoModelForCausalLM.from_pretrained(llama_folder, local_files_only=True)
    assert load_model(again).tokenizer is not None


def test_a_loaded_model_keeps_its_dtype_unless_told():
    hf, tok = build_tiny_hf("tiny-qwen2", dtype=torch.bfloat16)
    assert load_model(hf, tokenizer=tok).cfg.dtype == torch.bfloat16
    hf, tok = build_tiny_hf("tiny-qwen2")
    assert load_model(hf, tokenizer=tok, dtype=torch.bfloat16).cfg.dtype == torch.bfloat16


def test_a_folder_missing_files_names_them(tmp_path, llama_folder):
    with pytest.raises(ValueError, match="lacks config.json, \\*.safetensors.*tokenizer files"):
        load_model(str(tmp_path))
    hf, _ = build_tiny_hf("tiny-llama")
    _save(tmp_path, hf)  # weights and config, no tokenizer
    with pytest.raises(ValueError, match="lacks tokenizer files.*accepts.*local Hugging Face"):
        load_model(tmp_path)
    assert load_model(tmp_path, tokenizer=byte_tokenizer()).cfg.n_layers == 3


def _tiny_bert():
    config = transformers.BertConfig(
        vocab_size=259,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return transformers.BertModel(config).eval()


def test_an_encoder_is_refused_by_folder_and_by_object(tmp_path):
    bert = _tiny_bert()
    _save(tmp_path, bert, byte_tokenizer())
    with pytest.raises(ValueError, match="BertModel is not a causal LM.*accepts"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="BertModel is not a causal LM"):
        load_model(bert, tokenizer=byte_tokenizer())
    t5 = transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=259, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16
        )
    )
    with pytest.raises(ValueError, match="encoder-decoder"):
        load_model(t5, tokenizer=byte_tokenizer())


def test_objects_that_are_not_models_and_missing_tokenizers_are_refused():
    with pytest.raises(TypeError, match="got a Linear; it accepts.*PreTrainedModel"):
        load_model(torch.nn.Linear(2, 2))
    hf, _ = build_tiny_hf("tiny-llama")
    with pytest.raises(ValueError, match="no tokenizer for this LlamaForCausalLM: pass tokenizer"):
        load_model(hf)


def test_an_unknown_name_still_lists_the_packaged_names(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'.*smollm2-135m.*local Hugging"):
        load_model("nope")
    with pytest.raises(ValueError, match="unknown model .*no-such-dir.*smollm2-135m"):
        load_model(str(tmp_path / "no-such-dir"))


def test_every_public_function_runs_on_a_bridge_booted_by_hand():
    """No load_model: the user boots the bridge themselves, as TransformerLens documents."""
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = build_tiny_hf("tiny-qwen2", seed=9)
    hf.config.architectures = [type(hf).__name__]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_transformers(
            "my-own-qwen2", hf_model=hf, tokenizer=tok, device="cpu", dtype=torch.float32
        )
    clean, donor = random_tokens(1, 14, seed=5), random_tokens(1, 14, seed=6)
    trace = capture_residuals(model, donor, sites=("resid_pre", "resid_post"))
    assert trace.resid["resid_pre"].shape == (model.cfg.n_layers, 1, 14, model.cfg.d_model)
    assert torch.equal(patch_residual(model, clean, layer=1, source=trace), trace.logits)
    n = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)]
    names += [f"blocks.{l}.attn.hook_{t}" for l in range(n) for t in ("k", "v", "rot_k")]
    _, store = run_and_capture(model, clean, names)
    for l in range(n):
        kv = rebuild_kv(model, store[f"blocks.{l}.hook_resid_pre"], l)
        assert torch.equal(kv.k, store[f"blocks.{l}.attn.hook_k"])
        assert torch.equal(kv.v, store[f"blocks.{l}.attn.hook_v"])
        assert torch.equal(kv.rot_k, store[f"blocks.{l}.attn.hook_rot_k"])
    assert reconstruction_report(model, clean).query("shape == 'same'").bitwise_equal.all()
    sweep = patch_sweep(model, clean, donor, progress=False)
    assert len(sweep) == n * 14
    prompt = random_tokens(1, 12, seed=7)
    ref = generate(model, prompt, max_new_tokens=10, keep_logits=True)
    got = generate(model, prompt, max_new_tokens=10, keep_logits=True, cache=KVDirect(4))
    assert torch.equal(ref.tokens, got.tokens)
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, got.logits, strict=True))
    assert isinstance(generate(model, "hello", max_new_tokens=3).text[0], str)
