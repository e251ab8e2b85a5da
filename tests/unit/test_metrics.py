import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvdirect_interp import kl_divergence, token_match
from kvdirect_interp.metrics import ulp_distance


def test_kl_is_exactly_zero_for_equal_logits():
    logits = torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0))
    kl = kl_divergence(logits, logits.clone())
    assert kl.shape == (3, 5) and kl.dtype == torch.float64 and torch.all(kl == 0.0)


def test_kl_matches_a_hand_computation():
    p = torch.tensor([math.log(0.5), math.log(0.5)], dtype=torch.float64)
    q = torch.tensor([math.log(0.25), math.log(0.75)], dtype=torch.float64)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(p, q).item() == pytest.approx(expected, abs=1e-15)


def test_kl_handles_probabilities_that_underflow():
    p = torch.tensor([0.0, -2000.0])  # p(second) underflows to 0
    assert kl_divergence(p, torch.tensor([0.0, 0.0])).item() == pytest.approx(math.log(2))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=2, max_size=8),
    st.lists(st.floats(-20, 20), min_size=2, max_size=8),
)
def test_kl_is_non_negative(a, b):
    n = min(len(a), len(b))
    kl = kl_divergence(torch.tensor(a[:n]), torch.tensor(b[:n]))
    assert kl.item() >= -1e-12


def test_kl_shape_mismatch():
    with pytest.raises(ValueError, match="p_logits has shape \\(2, 5\\).*\\(2, 6\\)"):
        kl_divergence(torch.zeros(2, 5), torch.zeros(2, 6))


def test_token_match():
    m = token_match([1, 2, 3, 4], torch.tensor([1, 2, 9, 4]))
    assert (m.fraction, m.common_prefix, m.n, m.first_divergence) == (0.75, 2, 4, 2)
    same = token_match([5, 6], [5, 6])
    assert same.fraction == 1.0 and same.first_divergence is None
    with pytest.raises(ValueError, match="differ in length: 2 vs 3"):
        token_match([1, 2], [1, 2, 3])


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_ulp_of_neighbouring_floats_is_one(x):
    a = torch.tensor([x], dtype=torch.float32)
    b = torch.nextafter(a, torch.tensor([math.inf]))
    if torch.isfinite(b).all():
        assert ulp_distance(a, b).item() == 1
    assert ulp_distance(a, a).item() == 0


def test_ulp_across_zero_and_dtypes():
    assert ulp_distance(torch.tensor([0.0]), torch.tensor([-0.0])).item() == 0
    tiny = torch.nextafter(torch.tensor([0.0]), torch.tensor([1.0]))
    assert ulp_distance(tiny, -tiny).item() == 2
    one = torch.tensor([1.0], dtype=torch.bfloat16)
    assert ulp_distance(one, torch.nextafter(one, one + 1)).item() == 1
    with pytest.raises(ValueError, match="one float dtype"):
        ulp_distance(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
