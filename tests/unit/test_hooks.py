import pytest
import torch

from kvdirect_interp import (
    ResidualTrace,
    capture_residuals,
    kl_divergence,
    patch_residual,
    patch_sweep,
)
from kvdirect_interp.hooks import SITES, check_site
from tests.fixtures import random_tokens, tiny_model


def _sites(model):
    return [s for s in SITES if f"blocks.0.hook_{s}" in model.hook_dict]


def test_capture_shapes(tiny):
    toks = random_tokens(2, 12, seed=0)
    trace = capture_residuals(tiny, toks, sites=_sites(tiny))
    cfg = tiny.cfg
    for site in _sites(tiny):
        assert trace.resid[site].shape == (cfg.n_layers, 2, 12, cfg.d_model)
    assert trace.logits.shape == (2, 12, cfg.d_vocab)
    with torch.no_grad():
        assert torch.equal(trace.logits, tiny(toks))  # capturing does not change the output


def test_capture_subset_of_layers(tiny):
    trace = capture_residuals(tiny, random_tokens(1, 6, seed=0), layers=[1])
    assert trace.resid["resid_pre"].shape[0] == 1 and trace.layers == [1]
    with pytest.raises(ValueError, match="layer 0 was not captured; captured: \\[1\\]"):
        trace.at("resid_pre", 0)


def test_full_patch_gives_the_donor_logits_bitwise_at_every_layer_and_site(tiny):
    clean, donor = random_tokens(2, 20, seed=1), random_tokens(2, 20, seed=2)
    trace = capture_residuals(tiny, donor, sites=_sites(tiny))
    for site in _sites(tiny):
        for layer in range(tiny.cfg.n_layers):
            patched = patch_residual(tiny, clean, layer=layer, source=trace, site=site)
            assert torch.equal(patched, trace.logits), (site, layer)
            assert torch.all(kl_divergence(trace.logits, patched) == 0.0), (site, layer)


def test_source_forms_agree():
    model = tiny_model("tiny-llama")
    clean, donor = "The cat sat on the mat.", "A dog ran in the park!!"
    trace = capture_residuals(model, donor, layers=[1])
    by_trace = patch_residual(model, clean, layer=1, source=trace, positions=[2, 5])
    by_text = patch_residual(model, clean, layer=1, source=donor, positions=[2, 5])
    by_tensor = patch_residual(
        model, clean, layer=1, source=trace.at("resid_pre", 1), positions=[2, 5]
    )
    assert torch.equal(by_trace, by_text) and torch.equal(by_trace, by_tensor)


def test_partial_patch_leaves_earlier_positions_alone(tiny):
    clean, donor = random_tokens(1, 16, seed=3), random_tokens(1, 16, seed=4)
    with torch.no_grad():
        clean_logits = tiny(clean)
    patched = patch_residual(tiny, clean, layer=0, source=donor, positions=[10, -1])
    assert torch.equal(patched[:, :10], clean_logits[:, :10])  # causal: nothing before 10 moves
    assert not torch.equal(patched[:, 10:], clean_logits[:, 10:])


def test_hooks_are_removed_after_patching_and_after_errors():
    model = tiny_model("tiny-llama")
    toks = random_tokens(1, 8, seed=5)
    with torch.no_grad():
        before = model(toks)
    patch_residual(model, toks, layer=1, source=random_tokens(1, 8, seed=6))
    bad_source = torch.zeros(1, 8, model.cfg.d_model, dtype=torch.float64)

    def boom(tensor, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", boom)]):
            patch_residual(model, toks, layer=1, source=bad_source)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    with torch.no_grad():
        assert torch.equal(model(toks), before)


def test_patch_sweep_table(tiny):
    clean, donor = random_tokens(1, 10, seed=7), random_tokens(1, 10, seed=8)
    df = patch_sweep(tiny, clean, donor, progress=False)
    assert list(df.columns) == [
        *["layer", "batch", "position", "patched", "kl_to_donor"],
        *["baseline_clean", "baseline_donor", "recovery"],
    ]
    assert len(df) == tiny.cfg.n_layers * 10
    assert (df.kl_to_donor == 0.0).all()  # full patching: the donor's output, exactly
    assert (df.baseline_donor == 0.0).all() and (df.baseline_clean > 0).all()
    assert (df.recovery == 1.0).all()  # the donor's value, recovered in full
    assert df.attrs["metric"] == "kl_to_donor"
    per_pos = patch_sweep(
        tiny, clean, donor, per_position=True, progress=False, metric="kl_to_clean"
    )
    assert len(per_pos) == tiny.cfg.n_layers * 10 and set(per_pos.patched) == {"single"}
    last = per_pos[per_pos.position == 9]
    assert (last.kl_to_clean > 0).all()  # patching the last position changes its output


def test_patch_sweep_custom_metric():
    model = tiny_model("tiny-gpt2")
    clean, donor = random_tokens(1, 6, seed=9), random_tokens(1, 6, seed=10)

    def top_logit(patched, clean_logits, donor_logits):
        return patched.max(-1).values

    df = patch_sweep(model, clean, donor, metric=top_logit, layers=[1], progress=False)
    assert "top_logit" in df.columns and len(df) == 6


# ---- bad input: each error names the problem and the accepted values ----


def test_layer_out_of_range():
    model = tiny_model("tiny-llama")
    with pytest.raises(ValueError, match="layer 3 is out of range.*accepted: 0..2"):
        patch_residual(model, "hello", layer=3, source="world")
    with pytest.raises(ValueError, match="layer -1 is out of range"):
        capture_residuals(model, "hello", layers=[-1])


def test_unknown_site():
    with pytest.raises(ValueError, match="unknown site 'resid_mdi'.*resid_pre"):
        capture_residuals(tiny_model("tiny-llama"), "hi", sites=("resid_mdi",))
    with pytest.raises(
        ValueError, match="parallel.*accepted for this model: \\['resid_pre', 'resid_post'\\]"
    ):
        check_site(tiny_model("tiny-neox"), "resid_mid")


def test_source_shape_mismatch():
    model = tiny_model("tiny-llama")
    toks = random_tokens(1, 8, seed=0)
    with pytest.raises(
        ValueError, match="source residual has shape \\(1, 7, 64\\).*\\[1, 8, 64\\]"
    ):
        patch_residual(model, toks, layer=0, source=torch.zeros(1, 7, 64))
    with pytest.raises(ValueError, match="must be \\[batch, pos, d_model\\]"):
        patch_residual(model, toks, layer=0, source=torch.zeros(8, 64))
    with pytest.raises(ValueError, match="source residual has shape \\(2, 8, 64\\)"):
        patch_residual(model, toks, layer=0, source=torch.zeros(2, 8, 64))  # no broadcast


def test_donor_length_mismatch():
    model = tiny_model("tiny-llama")
    with pytest.raises(ValueError, match="source residual has shape"):
        patch_residual(model, "short", layer=0, source="a much longer donor prompt")
    with pytest.raises(ValueError, match="differ in shape"):
        patch_sweep(model, "short", "longer one", progress=False)
    with pytest.raises(ValueError, match="different lengths \\[4, 6\\]"):
        capture_residuals(model, ["abc", "abcde"])


def test_positions_out_of_range():
    model = tiny_model("tiny-llama")
    toks = random_tokens(1, 8, seed=0)
    with pytest.raises(ValueError, match="position 8 is out of range.*accepted: 0..7"):
        patch_residual(model, toks, layer=0, source=toks, positions=[1, 8])
    with pytest.raises(ValueError, match="twice"):
        patch_residual(model, toks, layer=0, source=toks, positions=[1, -7])


def test_empty_prompt():
    model = tiny_model("tiny-llama")
    for empty in ["", "   ", [], torch.zeros(1, 0, dtype=torch.long)]:
        with pytest.raises(ValueError, match="empty prompt"):
            capture_residuals(model, empty)


def test_prompt_longer_than_context():
    model = tiny_model("tiny-llama")
    with pytest.raises(ValueError, match="longer than the model's context of 2048"):
        capture_residuals(model, "x" * 2100)
    with pytest.raises(ValueError, match="2100 tokens"):
        capture_residuals(model, random_tokens(1, 2100, seed=0))


def test_bad_token_ids():
    model = tiny_model("tiny-llama")
    with pytest.raises(ValueError, match="token ids must lie in 0..258"):
        capture_residuals(model, torch.tensor([[1, 2, 999]]))
    with pytest.raises(ValueError, match="must hold integers"):
        capture_residuals(model, torch.zeros(1, 4))


def test_trace_is_a_dataclass_with_tokens():
    trace = capture_residuals(tiny_model("tiny-llama"), "hi there")
    assert isinstance(trace, ResidualTrace) and trace.tokens.shape == (1, 9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_source_residual_is_refused(bad):
    model = tiny_model("tiny-llama")
    tokens = random_tokens(1, 5, seed=21)
    source = capture_residuals(model, tokens, layers=[1]).at("resid_pre", 1).clone()
    source[0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"source residual has [01] NaN and [01] infinite"):
        patch_residual(model, tokens, layer=1, source=source)
    with pytest.raises(ValueError, match="source residual"):
        patch_residual(model, tokens, layer=1, source=source, positions=[2])
    # positions that are not patched may hold anything: only what is patched in is checked
    patch_residual(model, tokens, layer=1, source=source, positions=[0, -1])


def test_negative_positions_are_python_style_indices():
    model = tiny_model("tiny-llama")
    clean, donor = random_tokens(1, 6, seed=22), random_tokens(1, 6, seed=23)
    a = patch_residual(model, clean, layer=1, source=donor, positions=[-1])
    b = patch_residual(model, clean, layer=1, source=donor, positions=[5])
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="must be an integer"):
        patch_residual(model, clean, layer=1.0, source=donor)
