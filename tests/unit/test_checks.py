"""Input checks: a wrong type says "must be an integer", a wrong value names the range."""

import math

import pytest
import torch

from kvdirect_interp._checks import check_finite, check_layer, check_layers, check_positions
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny-llama")


def test_check_layer_accepts_every_layer(model):
    n = model.cfg.n_layers
    assert [check_layer(model, layer) for layer in range(n)] == list(range(n))
    assert check_layers(model, None) == list(range(n))


@pytest.mark.parametrize("layer", [1.0, 0.5, "1", True, None, torch.tensor(1)])
def test_check_layer_non_integer_says_so(model, layer):
    n = model.cfg.n_layers
    with pytest.raises(
        ValueError, match=rf"must be an integer \(got \w+\).*accepted: 0\.\.{n - 1}"
    ):
        check_layer(model, layer)
    with pytest.raises(ValueError, match="must be an integer"):
        check_layers(model, [0, layer])


@pytest.mark.parametrize("offset", [0, 5])
def test_check_layer_out_of_range_names_the_range(model, offset):
    n = model.cfg.n_layers
    for layer in (n + offset, -1 - offset):
        with pytest.raises(
            ValueError,
            match=rf"out of range; this model has {n} layers, "
            rf"accepted: 0\.\.{n - 1}",
        ):
            check_layer(model, layer)


def test_check_layers_empty(model):
    with pytest.raises(ValueError, match="layers is empty"):
        check_layers(model, [])


def test_check_positions_negative_are_python_indices():
    assert check_positions(None, 5) is None
    assert check_positions(-1, 5) == [4]
    assert check_positions([-5, 2, -2], 5) == [0, 2, 3]
    assert check_positions(range(5), 5) == [0, 1, 2, 3, 4]
    assert "Python-style" in check_positions.__doc__ and "-1 is the last" in check_positions.__doc__


@pytest.mark.parametrize("positions", [1.0, [0, 2.0], [math.nan], ["1"], [True], 0.5])
def test_check_positions_non_integer_says_so(positions):
    with pytest.raises(
        ValueError,
        match=r"must be an integer \(got \w+\).*"
        r"accepted: 0\.\.4 \(or -5\.\.-1\)",
    ):
        check_positions(positions, 5)


@pytest.mark.parametrize("positions", [5, [0, 7], -6])
def test_check_positions_out_of_range_names_the_range(positions):
    with pytest.raises(
        ValueError,
        match=r"out of range for a sequence of 5 tokens; "
        r"accepted: 0\.\.4 \(or -5\.\.-1\)",
    ):
        check_positions(positions, 5)


def test_check_positions_empty_or_repeated():
    with pytest.raises(ValueError, match="positions is empty"):
        check_positions([], 5)
    with pytest.raises(ValueError, match="name a position twice"):
        check_positions([1, -4], 5)  # -4 is 1


def test_check_finite_passes_finite_and_integer_tensors():
    check_finite(torch.randn(2, 3, 4), "source")
    check_finite(torch.arange(6), "tokens")
    check_finite(torch.zeros(0), "empty")
    check_finite(torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "bf16")


def test_check_finite_names_the_tensor_and_counts():
    t = torch.zeros(2, 3, 4)
    t[0, 0, :3] = math.nan
    t[1, 2, 0] = math.inf
    t[1, 2, 1] = -math.inf
    with pytest.raises(
        ValueError,
        match=r"source residual has 3 NaN and 2 infinite entries "
        r"\(of 24, shape \(2, 3, 4\)\)",
    ):
        check_finite(t, "source residual")
    with pytest.raises(ValueError, match=r"x has 0 NaN and 1 infinite"):
        check_finite(torch.tensor([1.0, math.inf], dtype=torch.float16), "x")


def test_public_functions_report_a_float_layer(model):
    import kvdirect_interp as kd

    resid = torch.zeros(1, 3, model.cfg.d_model)
    with pytest.raises(ValueError, match=r"layer 1\.0 must be an integer \(got float\)"):
        kd.rebuild_kv(model, resid, 1.0)
