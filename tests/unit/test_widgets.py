import pytest
import torch

from kvdirect_interp import FullKV, KVDirect, WindowOnly, explore
from kvdirect_interp.widgets import GenerationComparer, PatchingExplorer, ReconstructionExplorer
from tests.fixtures import tiny_model

CLEAN, DONOR = "The cat sat on the mat.", "A dog ran in the park!!"  # 23 bytes each


def loader(name, dtype):
    return tiny_model(name) if dtype == torch.float32 else tiny_model_bf16(name)


def tiny_model_bf16(name):
    from kvdirect_interp import load_model

    return load_model(name, dtype=torch.bfloat16)


def test_parse_positions():
    assert explore.parse_positions("all", 5) is None
    assert explore.parse_positions(" 3, 1 -1", 5) == [1, 3, 4]
    with pytest.raises(ValueError, match="position 5 is out of range; accepted: 0..4"):
        explore.parse_positions("5", 5)
    with pytest.raises(ValueError, match="'all' or integers"):
        explore.parse_positions("first", 5)


def test_patching_tables():
    model = tiny_model("tiny-llama")
    grid = explore.patching_heatmap(model, CLEAN, DONOR)
    n_pos = model.to_tokens(CLEAN).shape[1]
    assert grid.shape == (model.cfg.n_layers, n_pos)
    assert (grid.values >= 0).all() and grid.values[:, -1].min() > 0
    assert grid.attrs["path"] == "layered"  # the exact fast sweep
    labels = explore.position_labels(model, CLEAN)
    assert len(labels) == n_pos and labels[0].startswith("0: ")
    assert len(set(labels)) == n_pos  # repeated tokens stay distinct
    changes = explore.top_token_changes(model, CLEAN, DONOR)
    assert list(changes.columns) == ["layer", "clean", "patched", "donor", "changed"]
    assert (changes.patched == changes.donor).all()  # every position patched: the donor's


def test_compare_generations():
    model = tiny_model("tiny-llama")
    same = explore.compare_generations(model, "Once upon", FullKV(), KVDirect(4), max_new_tokens=8)
    assert same["first_divergence"] is None and same["token_match"] == 1.0
    assert len(same["aligned"]) == 8 and len(same["memory"]) == 8  # prefill + 7 steps
    assert same["memory"].b_bytes.iloc[-1] > 0


def test_patching_explorer_responds_to_controls():
    w = PatchingExplorer(clean=CLEAN, donor=DONOR, loader=loader)
    before = [list(r) for r in w.figure.data[0].z]
    assert "resid_pre" in w.figure.layout.title.text and "layers change" in w.status.value
    n_pos = tiny_model("tiny-llama").to_tokens(CLEAN).shape[1]
    axis = w.figure.layout.xaxis
    assert list(axis.tickvals) == list(range(n_pos)) and axis.ticktext[1].startswith("1: ")
    assert w.figure.layout.yaxis.dtick == 1  # integer layer ticks, no 0.5
    w.site.value = "resid_post"
    assert "resid_post" in w.figure.layout.title.text
    assert [list(r) for r in w.figure.data[0].z] != before
    w.positions.value = "99"  # bad input: shown, not raised
    assert "out of range" in w.status.value


def test_reconstruction_explorer_marks_bitwise_layers():
    w = ReconstructionExplorer(text=CLEAN, loader=loader)
    assert all(t == "=" for t in w.figure.data[0].text)  # same-shape rebuild: bitwise
    w.shape.value = "one_token"
    assert "one_token" in w.figure.layout.title.text
    # whether a 1-row GEMM gives the same bits depends on the CPU's kernels: the figure
    # must show what the report measured on this machine, either way
    view = explore.reconstruction_view(tiny_model("tiny-llama"), CLEAN, shape="one_token")
    marks = [t == "=" for trace in w.figure.data for t in trace.text]
    assert sorted(marks) == sorted(view.bitwise_equal.tolist())
    assert all(y >= 0 for trace in w.figure.data for y in trace.y)


def test_generation_comparer_highlights_divergence():
    model = tiny_model("tiny-llama")
    w = GenerationComparer(
        model,
        "Once upon a time",
        {"FullKV": FullKV(), "KVDirect": KVDirect(4), "Window": WindowOnly(4)},
        max_new_tokens=8,
    )
    assert "first divergence" in w.status.value and "#fdd" in w.tokens.value
    w.policy_b.value = "KVDirect"
    assert "first divergence: none" in w.status.value and "#fdd" not in w.tokens.value
    assert list(w.figure.data[1].y) != list(w.figure.data[0].y)
