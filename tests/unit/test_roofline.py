"""The roofline model of claim 6: its formulas on hand-checkable shapes, the policies' own
FLOPs, the cited device file, and predictions that grow with the work."""

import json
import math

import pytest

from kvdirect_interp import real_shapes, roofline
from kvdirect_interp.cost import Arch
from kvdirect_interp.memory import GEMMA3_4B, LLAMA2_7B, Shape
from kvdirect_interp.policies import FullKV, KVDirect

TOY_ARCH = Arch(n_layers=2, d_model=8, n_heads=2, n_kv_heads=1, d_head=4, d_mlp=16, d_vocab=10)
TOY_SHAPE = Shape("toy", n_layers=2, d_model=8, n_kv_heads=1, d_head=4, bytes_per_element=2)
GEMMA = (real_shapes.arch("gemma3-4b"), real_shapes.shape("gemma3-4b"))
LLAMA = (real_shapes.arch("llama3.2-1b"), real_shapes.shape("llama3.2-1b"))


def test_rebuild_cost_by_hand():
    # batch 2 x 3 tokens = 6; k and v projections 8 -> 1 x 4 each: 2 * 8 * 2 * 4 * 6 FLOPs;
    # bytes: W_k + W_v (2 * 8 * 4 * 2) + residuals (6 * 8 * 2) + K/V (6 * 2 * 4 * 2)
    cost = roofline.rebuild_cost(TOY_ARCH, TOY_SHAPE, "every_layer", 2, 3)
    assert cost == {
        "layers": 1,
        "flops": 768,
        "rebuild_bytes": 128 + 96 + 96,
        "checkpoint_bytes": 96,
        "kv_bytes": 96,
    }
    d = roofline.Device("toy", flops=1e3, memory_bandwidth=1e3, link_bandwidth=96.0)
    assert d.time(cost["flops"], cost["rebuild_bytes"]) == pytest.approx(0.768)  # compute
    assert roofline.read_seconds(d, 96, "device_memory") == pytest.approx(0.192)  # a copy
    assert roofline.read_seconds(d, 96, "pinned_host") == pytest.approx(1.0)
    assert math.isnan(roofline.read_seconds(d, 96, "nvme"))  # no storage given


def test_token_ids_hold_four_bytes_and_read_embedding_rows():
    ids = roofline.rebuild_cost(TOY_ARCH, TOY_SHAPE, "token_ids", 1, 5)
    first = roofline.rebuild_cost(TOY_ARCH, TOY_SHAPE, "first_layer", 1, 5)
    assert ids["checkpoint_bytes"] == 5 * 4 and first["checkpoint_bytes"] == 5 * 8 * 2
    assert ids["flops"] == first["flops"] and ids["layers"] == first["layers"] == 2
    assert ids["kv_bytes"] == first["kv_bytes"] == 5 * 2 * 2 * 1 * 4 * 2  # every layer
    # the same rows of the embedding as first_layer's residuals, plus the ids themselves
    assert ids["rebuild_bytes"] - first["rebuild_bytes"] == 5 * 4


@pytest.mark.parametrize(
    ("shape", "ratio"),
    [(GEMMA3_4B, 2560 / (2 * 4 * 256)), (LLAMA[1], 2048 / (2 * 8 * 64)), (LLAMA2_7B, 0.5)],
)
def test_a_layer_residual_against_the_kv_it_replaces(shape, ratio):
    """Grouped-query shapes (Gemma 3-4B, Llama-3.2-1B): a residual is larger than the K/V
    of its layer; a multi-head shape (Llama 2-7B): half of it."""
    cost = roofline.rebuild_cost(GEMMA[0], shape, "every_layer", 4, 64)
    assert cost["checkpoint_bytes"] / cost["kv_bytes"] == pytest.approx(ratio)


@pytest.mark.parametrize("mode", roofline.MODES)
def test_flops_are_the_policies_own(mode):
    """A step's extra FLOPs over FullKV's (`step_flops`) are the rebuild's: per layer for
    every_layer (times n_layers), the whole re-prefill for the replay modes."""
    a, s = GEMMA
    window, context = 64, 1000
    extra = KVDirect(window, checkpoint=mode).step_flops(a, context) - FullKV().step_flops(
        a, context
    )
    cost = roofline.rebuild_cost(a, s, mode, 1, context - window)
    layers = a.n_layers if mode == "every_layer" else 1
    assert cost["flops"] * layers == pytest.approx(extra, rel=1e-12)


def test_real_shapes_match_the_papers_gemma():
    s = real_shapes.shape("gemma3-4b")
    assert (s.n_layers, s.d_model, s.n_kv_heads, s.d_head, s.bytes_per_element) == (
        34, 2560, 4, 256, 2,
    )  # fmt: skip
    assert (s.n_global_layers, s.sliding_window) == (
        GEMMA3_4B.n_global_layers,
        GEMMA3_4B.sliding_window,
    )
    assert (
        real_shapes.global_layer("gemma3-4b") == 5 and real_shapes.global_layer("llama3.2-1b") == 0
    )


def test_every_packaged_number_is_cited():
    devices = roofline.load_devices()
    assert {"H100 SXM", "A100 SXM 80GB", "RTX 4090"} <= set(devices)
    for d in devices.values():
        assert set(d.sources) == {
            "flops",
            "memory_bandwidth",
            "link_bandwidth",
            "storage_bandwidth",
        }
        assert all("<http" in src for src in d.sources.values())
    h100 = devices["H100 SXM"]
    assert (h100.flops, h100.memory_bandwidth, h100.link_bandwidth) == (989.4e12, 3.35e12, 63e9)
    assert roofline.device_for("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert roofline.device_for("Tesla T4") is None


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["devices"]["A100 SXM 80GB"]["bf16_flops"].pop("source"), "no citation"),
        (lambda d: d["links"]["PCIe Gen4 x16"]["source"].update(url=""), "no citation"),
        (lambda d: d["storage"]["NVMe Gen4"]["source"].pop("document"), "no citation"),
        (lambda d: d["devices"]["RTX 4090"].update(host_link="PCIe Gen9"), "is not one of"),
    ],
)
def test_a_device_file_without_citations_is_refused(tmp_path, edit, match):
    data = json.loads(roofline.DEVICES_FILE.read_text())
    edit(data)
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        roofline.load_devices(path)


def test_bad_input_names_the_accepted_values():
    with pytest.raises(ValueError, match="accepted: \\['every_layer'"):
        roofline.rebuild_cost(*GEMMA, "min_bytes", 1, 64)
    with pytest.raises(ValueError, match="evicted_tokens must be an integer >= 1"):
        roofline.rebuild_cost(*GEMMA, "every_layer", 1, 0)
    with pytest.raises(ValueError, match="accepted: \\['device_memory'"):
        roofline.read_seconds(roofline.load_devices()["RTX 4090"], 1.0, "tape")
    with pytest.raises(ValueError, match="memory_bandwidth must be a number > 0"):
        roofline.Device("broken", flops=1.0, memory_bandwidth=0)


@pytest.fixture(scope="module")
def predictions():
    return roofline.predict(
        roofline.load_devices().values(), {"gemma3-4b": GEMMA, "llama3.2-1b": LLAMA}
    )


def test_predictions_grow_with_evicted_tokens_and_batch(predictions):
    keys = ["device", "model", "mode", "tier"]
    for by, other in (("evicted_tokens", "batch"), ("batch", "evicted_tokens")):
        for _, g in predictions.groupby([*keys, other]):
            g = g.sort_values(by)
            assert g.rebuild_s.is_monotonic_increasing and g.read_s.is_monotonic_increasing
    assert set(predictions.source) == {roofline.PREDICTED}
    assert (predictions.speedup * predictions.rebuild_over_read).sub(1).abs().max() < 1e-12


def test_where_recompute_wins(predictions):
    wins = roofline.where_recompute_wins(predictions).set_index(["device", "model", "mode", "tier"])
    # a per-layer rebuild writes the K/V it replaces after reading a larger residual: never
    # faster than a copy within GPU memory
    assert (
        wins.xs(("every_layer", "device_memory"), level=("mode", "tier")).best_speedup < 1
    ).all()
    # over PCIe, once compute-bound (from 1,024 tokens on): per token, H100's 989.4 TFLOP/s
    # against K/V bytes over 63 GB/s
    h100 = wins.loc[("H100 SXM", "gemma3-4b", "every_layer", "pinned_host")]
    flops, read = 2 * 2560 * 2 * 4 * 256, 2 * 4 * 256 * 2 / 63e9
    assert h100.best_speedup == pytest.approx(read / (flops / 989.4e12))
    assert h100.best_from == "batch 1, N 1024" and h100.bound_at_best == "compute"
    assert h100.reaches_5x and h100.wins == "16/16"
    # checkpoints larger than the K/V (GQA) kept in the same tier can never win
    gqa = wins[wins.ckpt_over_kv > 1]
    assert len(gqa) and (gqa.best_ckpt_in_tier_speedup < 1).all()
    claim = roofline.predicted_claim6(predictions)
    assert set(claim.source) == {roofline.PREDICTED}
    assert set(claim.predicted) <= {"reaches 5x", "faster, short of 5x", "never faster"}
