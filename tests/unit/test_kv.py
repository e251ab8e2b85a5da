import warnings

import pytest
import torch

from kvdirect_interp import capture_residuals, rebuild_kv, reconstruction_report
from kvdirect_interp.hooks import run_and_capture
from kvdirect_interp.kv import has_rotary
from tests.fixtures import random_tokens, tiny_model

REF = {"k": "attn.hook_k", "v": "attn.hook_v", "rot_k": "attn.hook_rot_k"}


def test_same_shape_rebuild_is_bitwise_equal_at_every_layer(tiny):
    toks = random_tokens(2, 24, seed=0)
    n = tiny.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)]
    names += [f"blocks.{l}.{REF[t]}" for l in range(n) for t in ("k", "v")]
    _, store = run_and_capture(tiny, toks, names)
    for layer in range(n):
        kv = rebuild_kv(tiny, store[f"blocks.{layer}.hook_resid_pre"], layer)
        assert torch.equal(kv.k, store[f"blocks.{layer}.attn.hook_k"]), layer
        assert torch.equal(kv.v, store[f"blocks.{layer}.attn.hook_v"]), layer


def test_report_finds_same_shape_rebuild_bitwise_equal(tiny):
    df = reconstruction_report(tiny, random_tokens(1, 20, seed=1))
    assert list(df.columns) == [
        "layer",
        "tensor",
        "shape",
        "reference",
        "bitwise_equal",
        "max_abs_err",
        "max_ulp",
    ]
    assert len(df) == tiny.cfg.n_layers * 3 * 2
    same = df[(df["shape"] == "same") & df.reference.notna()]
    assert same.bitwise_equal.all() and (same.max_ulp == 0).all()
    # the rotated key is compared wherever the bridge fires a hook for it
    compared = set(same.tensor)
    assert {"k", "v"} <= compared
    if "rot_k" not in compared:  # GPT-NeoX in TransformerLens 4.3: hook_rot_k never fires
        assert type(tiny.original_model).__name__ == "GPTNeoXForCausalLM"


def test_rotated_key_equals_hook_rot_k_for_rotary_families():
    for name in ["tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-mistral"]:
        model = tiny_model(name)
        assert has_rotary(model)
        toks = random_tokens(1, 12, seed=2)
        _, store = run_and_capture(
            model, toks, ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_rot_k"]
        )
        kv = rebuild_kv(model, store["blocks.1.hook_resid_pre"], 1)
        assert torch.equal(kv.rot_k, store["blocks.1.attn.hook_rot_k"]), name


def test_rebuild_at_later_positions_uses_those_positions():
    model = tiny_model("tiny-llama")
    toks = random_tokens(1, 30, seed=3)
    trace = capture_residuals(model, toks, layers=[2])
    resid = trace.at("resid_pre", 2)
    full = rebuild_kv(model, resid, 2)
    tail = rebuild_kv(model, resid[:, 20:], 2, positions=torch.arange(20, 30))
    torch.testing.assert_close(tail.rot_k, full.rot_k[:, 20:], rtol=0, atol=1e-5)
    wrong = rebuild_kv(model, resid[:, 20:], 2)  # positions 0..9: a different rotation
    assert not torch.allclose(wrong.rot_k, full.rot_k[:, 20:], atol=1e-3)


def test_one_token_rebuild_is_reported_not_forced():
    df = reconstruction_report(
        tiny_model("tiny-llama"),
        random_tokens(1, 16, seed=4),
        shapes=("one_token", "one_token_padded8"),
    )
    assert set(df["shape"]) == {"one_token", "one_token_padded8"}
    assert (df.max_abs_err < 1e-4).all()  # close, whatever the bits say


def test_rebuild_bad_input():
    model = tiny_model("tiny-llama")
    with pytest.raises(ValueError, match="layer 5 is out of range.*0..2"):
        rebuild_kv(model, torch.zeros(1, 4, 64), 5)
    with pytest.raises(ValueError, match="residual must be \\[batch, pos, d_model=64\\]"):
        rebuild_kv(model, torch.zeros(1, 4, 63), 0)
    with pytest.raises(ValueError, match="one entry per residual row \\(4\\)"):
        rebuild_kv(model, torch.zeros(1, 4, 64), 0, positions=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown rebuild shape 'tiny'.*same"):
        reconstruction_report(model, "hi", shapes=("tiny",))


def test_norm_shortcut_gives_the_bridge_norm_bits_and_steps_aside_for_hooks(tiny):
    from kvdirect_interp.kv import _norm

    x = torch.randn(2, 5, tiny.cfg.d_model, generator=torch.Generator().manual_seed(3))
    for block in tiny.blocks:
        with torch.no_grad():
            assert torch.equal(_norm(block.ln1, x), block.ln1(x))
    ln1 = tiny.blocks[0].ln1
    if getattr(ln1, "hook_normalized", None) is not None:
        # an edit at a hook point inside the norm must reach the rebuild (the bridge warns
        # that it then rebuilds the norm's output from the hooked values)
        with tiny.hooks(fwd_hooks=[("blocks.0.ln1.hook_normalized", lambda t, hook: t * 2)]):
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                edited = _norm(ln1, x)
                assert torch.equal(edited, ln1(x))
        assert not torch.equal(edited, _norm(ln1, x))


def test_cached_rotary_tables_follow_the_positions():
    from kvdirect_interp import kv

    model = tiny_model("tiny-gemma3")  # two rotary bases: sliding and global layers
    resid = torch.randn(1, 6, model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    wanted = {}
    for positions in (torch.arange(6), torch.arange(10, 16), torch.arange(6)):
        for layer in range(model.cfg.n_layers):
            got = rebuild_kv(model, resid, layer, positions=positions).rot_k
            kv._COS_SIN.clear()  # nothing cached: computed afresh
            fresh = rebuild_kv(model, resid, layer, positions=positions).rot_k
            assert torch.equal(got, fresh)
            wanted.setdefault((int(positions[0]), layer), fresh)
    assert not torch.equal(wanted[0, 0], wanted[10, 0])


def test_row_by_row_rebuild_equals_one_rebuild_per_row(tiny):
    """row_by_row projects each row with its own 1-row GEMM and runs the norms and rotary
    over all rows at once: the same bits as rebuilding one row at a time (what KV-Direct
    did for each decoded token), on every family."""
    resid = torch.randn(1, 9, tiny.cfg.d_model, generator=torch.Generator().manual_seed(3))
    positions = list(range(40, 49))
    for layer in range(tiny.cfg.n_layers):
        got = rebuild_kv(tiny, resid, layer, positions=positions, row_by_row=True)
        rows = [
            rebuild_kv(tiny, resid[:, i : i + 1], layer, positions=positions[i : i + 1])
            for i in range(9)
        ]
        for field in ("k", "v", "rot_k"):
            want = torch.cat([getattr(r, field) for r in rows], dim=1)
            assert torch.equal(getattr(got, field), want), (layer, field)
    with pytest.raises(ValueError, match="row_by_row needs batch 1"):
        rebuild_kv(tiny, resid.expand(2, -1, -1), 0, row_by_row=True)
