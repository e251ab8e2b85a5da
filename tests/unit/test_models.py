import pytest
import torch

from kvdirect_interp import list_models, load_model, models
from tests.fixtures import TINY, random_tokens, tiny_model


def test_list_models_names_and_columns():
    df = list_models()
    assert list(df.columns[:8]) == [
        "name",
        "kind",
        "family",
        "n_layers",
        "d_model",
        "n_heads",
        "n_kv_heads",
        "d_head",
    ]
    assert set(TINY) | {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"} == set(df.name)


@pytest.mark.parametrize("name", TINY)
def test_tiny_shapes_match_list_models(name):
    row = list_models().set_index("name").loc[name]
    cfg = tiny_model(name).cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head) == (
        row.n_layers,
        row.d_model,
        row.n_heads,
        row.d_head,
    )
    assert (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) == row.n_kv_heads
    assert 2 <= cfg.n_layers <= 4 and cfg.d_model <= 128


def test_gqa_and_sliding_window_where_the_family_has_them():
    df = list_models().set_index("name")
    for name in ["tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-mistral"]:
        assert df.loc[name, "n_kv_heads"] < df.loc[name, "n_heads"]
    hf_cfg = tiny_model("tiny-gemma3").original_model.config
    assert "sliding_attention" in hf_cfg.layer_types and "full_attention" in hf_cfg.layer_types


def test_tiny_models_are_seeded_and_deterministic():
    toks = random_tokens(1, 16, seed=0)
    a, b = load_model("tiny-llama"), load_model("tiny-llama")
    c = load_model("tiny-llama", seed=1)
    with torch.no_grad():
        assert torch.equal(a(toks), b(toks))
        assert not torch.equal(a(toks), c(toks))


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'gpt-5'.*smollm2-135m.*tiny-llama"):
        load_model("gpt-5")


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        load_model("tiny-llama", dtype=torch.int32)


def test_bfloat16_tiny_model_runs():
    model = load_model("tiny-qwen2", dtype=torch.bfloat16)
    with torch.no_grad():
        assert model(random_tokens(1, 8, seed=0)).dtype == torch.bfloat16


@pytest.mark.parametrize("name", TINY)
def test_loaded_bridge_is_in_eval_mode_throughout(name):
    """Dropout and the like stay off: every module, the bridge's and the HF model's."""
    bridge = load_model(name)
    assert not any(m.training for m in bridge.modules())
    assert not any(m.training for m in bridge.original_model.modules())


def test_the_honest_name_of_the_qwen_checkpoint_is_an_alias():
    # the stored results keep "qwen2.5-0.5b"; the checkpoint is Qwen2.5-Coder-0.5B-Instruct
    assert models.canonical("qwen2.5-coder-0.5b") == "qwen2.5-0.5b"
    assert models.canonical("smollm2-135m") == "smollm2-135m"
    assert list_models().set_index("name").loc["qwen2.5-0.5b", "aliases"] == "qwen2.5-coder-0.5b"
    with pytest.raises(ValueError, match="aliases: qwen2.5-coder-0.5b"):
        load_model("qwen2.5-coder")
