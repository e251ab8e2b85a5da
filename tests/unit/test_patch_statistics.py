"""Patching metrics, bootstrap intervals over prompt pairs, and attribution patching."""

import numpy as np
import pandas as pd
import pytest
import torch

import kvdirect_interp as kd
from kvdirect_interp import KL, LogitDiff, LogProb, patch_sweep
from kvdirect_interp.metrics import bootstrap_means
from kvdirect_interp.patch_metrics import METRICS, resolve
from tests.fixtures import random_tokens, tiny_model


def logits(seed, shape=(2, 3, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- metrics -----------------------------------------------------------------------------


def test_built_in_metrics_by_hand():
    p, c, d = logits(0), logits(1), logits(2)
    diff = LogitDiff(answer=4, distractor=7)(p, c, d)
    assert diff.dtype == torch.float64 and diff.shape == (2, 3)
    assert torch.equal(diff, p[..., 4].double() - p[..., 7].double())
    per_row = LogitDiff(answer=[1, 2], distractor=[3, 0])(p, c, d)
    assert torch.equal(per_row[1], p[1, :, 2].double() - p[1, :, 0].double())
    lp = LogProb(5)(p, c, d)
    assert torch.allclose(lp, torch.log_softmax(p.double(), -1)[..., 5], atol=0, rtol=0)
    assert torch.equal(KL("donor")(p, c, d), kd.kl_divergence(d, p))
    assert torch.equal(KL("clean", reverse=True)(p, c, d), kd.kl_divergence(p, c))
    assert torch.equal(METRICS["reverse_kl_to_donor"](p, c, d), kd.kl_divergence(p, d))
    top = METRICS["top_token_is_donor"](d, c, d)
    assert (top == 1.0).all()
    assert {resolve(m)[0] for m in METRICS} == set(METRICS)
    assert resolve(LogitDiff(1, 2))[0] == "logit_diff"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LogitDiff(1.5, 2), "token id"),
        (lambda: LogitDiff(-1, 2), "non-negative"),
        (lambda: LogitDiff(True, 2), "token id"),
        (lambda: LogProb([]), "sequence of ids"),
        (lambda: KL("other"), "'donor' or 'clean'"),
    ],
)
def test_bad_metric_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_metric_ids_are_checked_against_the_run():
    p = logits(0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        LogProb(11)(p, p, p)
    with pytest.raises(ValueError, match="has 3 ids for a batch of 2"):
        LogitDiff([1, 2, 3], 0)(p, p, p)
    with pytest.raises(ValueError, match="unknown metric 'kl'.*LogitDiff"):
        resolve("kl")


def test_a_custom_metric_of_the_wrong_shape_is_refused():
    model = tiny_model("tiny-llama")
    clean, donor = random_tokens(2, 5, seed=1), random_tokens(2, 5, seed=2)
    with pytest.raises(ValueError, match=r"must return a tensor \[batch, pos\]"):
        patch_sweep(model, clean, donor, metric=lambda p, c, d: p[..., 0].sum(), progress=False)


# ---- bootstrap ---------------------------------------------------------------------------


def test_bootstrap_interval_covers_the_mean_and_is_seeded():
    values = np.arange(20, dtype=float)
    mean, low, high = kd.bootstrap_ci(values, seed=3)
    assert mean == 9.5 and low < mean < high
    assert kd.bootstrap_ci(values, seed=3) == (mean, low, high)
    # the standard error of the mean of 0..19 is ~1.29: a 95% interval ~ +-2.5
    assert 1.5 < high - mean < 3.5 and 1.5 < mean - low < 3.5
    same = kd.bootstrap_ci([2.0, 2.0, 2.0])
    assert same == (2.0, 2.0, 2.0)
    one = kd.bootstrap_ci([4.0])
    assert one[0] == 4.0 and np.isnan(one[1]) and np.isnan(one[2])


def test_bootstrap_refuses_nan_and_bad_settings():
    with pytest.raises(ValueError, match="NaN"):
        kd.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        kd.bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        kd.bootstrap_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match=r"\[groups, n\]"):
        bootstrap_means(np.zeros((2, 0)))


def test_grouped_bootstrap_equals_one_group_at_a_time():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 5))
    together = bootstrap_means(values, 500, seed=1)
    for g in range(7):
        assert np.array_equal(together[g], bootstrap_means(values[g : g + 1], 500, seed=1)[0])


# ---- summary over prompt pairs -----------------------------------------------------------


def test_sweep_summary_over_pairs():
    model = tiny_model("tiny-llama")
    clean, donor = random_tokens(4, 6, seed=11), random_tokens(4, 6, seed=12)
    df = patch_sweep(model, clean, donor, per_position=True, progress=False)
    out = kd.sweep_summary(df, n_resamples=2000)
    assert len(out) == model.cfg.n_layers * 6 and (out.n_pairs == 4).all()
    cell = df[(df.layer == 1) & (df.position == 2)]
    row = out[(out.layer == 1) & (out.position == 2)].iloc[0]
    assert row["mean"] == pytest.approx(cell.kl_to_donor.mean(), abs=0, rel=1e-15)
    assert row.mean_low <= row["mean"] <= row.mean_high
    want = (cell.kl_to_donor.mean() - cell.baseline_clean.mean()) / (
        cell.baseline_donor.mean() - cell.baseline_clean.mean()
    )
    assert row.recovery == pytest.approx(want, rel=1e-12)
    assert row.recovery_low <= row.recovery <= row.recovery_high
    whole = kd.sweep_summary(patch_sweep(model, clean, donor, progress=False))
    assert (whole.recovery == 1.0).all() and (whole.patched == "all").all()
    with pytest.raises(ValueError, match="sweep_summary needs"):
        kd.sweep_summary(pd.DataFrame({"layer": [0]}))


# ---- attribution patching ----------------------------------------------------------------


def directional_derivative(model, clean, donor_resid, clean_resid, metric, site, layer, pos):
    """d metric / dt at t=0 of the run whose residual at (layer, site, pos) is clean + t *
    (donor - clean): one cell, its own graph (a scalar t), by autograd [batch]."""
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    direction = donor_resid[:, pos] - clean_resid[:, pos]

    def move(x):
        out = x.clone()
        out[:, pos] = x[:, pos] + t * direction
        return out

    with torch.enable_grad():
        out = kd.forward(model, clean, hooks=kd.hooks.edit_hooks(layer, site, move))
        value = metric(out, None, None)[:, -1]
        return torch.stack([torch.autograd.grad(v, t, retain_graph=True)[0] for v in value])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
@pytest.mark.parametrize("site", ["resid_pre", "resid_mid", "resid_post"])
def test_attribution_is_the_directional_derivative(name, site):
    """Each cell's estimate must be the derivative of the metric along the patch, computed
    cell by cell on its own graph; and, as a sanity check of that, close to a central
    finite difference (float64 model; RMSNorm computes in float32, hence the tolerance)."""
    model = kd.load_model(name, dtype=torch.float64)
    try:
        kd.hooks.check_site(model, site)
    except ValueError:
        pytest.skip(f"{name} has no {site}")
    clean, donor = random_tokens(2, 6, seed=21), random_tokens(2, 6, seed=22)
    metric = LogitDiff(answer=3, distractor=5)
    attr = kd.attribution_sweep(model, clean, donor, metric=metric, site=site, layers=[0, 1])
    assert len(attr) == 2 * 2 * 6 and (attr.patched == "single").all()
    trace = kd.capture_residuals(model, donor, sites=(site,), layers=[0, 1])
    base = kd.capture_residuals(model, clean, sites=(site,), layers=[0, 1])
    for layer, pos in [(0, 1), (1, 4), (0, 5)]:
        d, c = trace.at(site, layer), base.at(site, layer)
        got = attr[(attr.layer == layer) & (attr.position == pos)].attribution.to_numpy()
        want = directional_derivative(model, clean, d, c, metric, site, layer, pos)
        assert np.allclose(got, want.numpy(), rtol=1e-9, atol=1e-12)
        eps, ends = 1e-3, []
        for sign in (1, -1):
            mix = c.clone()
            mix[:, pos] += sign * eps * (d[:, pos] - c[:, pos])
            patched = kd.patch_residual(model, clean, layer=layer, source=mix, site=site)
            ends.append(metric(patched, None, None)[:, -1])
        slope = ((ends[0] - ends[1]) / (2 * eps)).numpy()
        assert np.allclose(got, slope, rtol=5e-3, atol=5e-3)


def test_attribution_against_the_exact_sweep():
    model = tiny_model("tiny-llama")
    clean, donor = random_tokens(2, 7, seed=31), random_tokens(2, 7, seed=32)
    exact = patch_sweep(model, clean, donor, per_position=True, progress=False)
    attr = kd.attribution_sweep(model, clean, donor)
    key = ["layer", "batch", "position"]
    assert attr[key].equals(exact[key])  # the same cells, in the same order
    # the clean run with zeros added at every layer is the clean run, bit for bit
    assert (attr.baseline_clean.to_numpy() == exact.baseline_clean.to_numpy()).all()
    assert (attr.baseline_donor.to_numpy() == exact.baseline_donor.to_numpy()).all()
    report = kd.attribution_error(exact, attr)
    assert report["n_cells"] == len(exact) and -1 <= report["pearson"] <= 1
    assert report["max_abs_error"] >= report["median_abs_error"] >= 0
    assert len(report["worst"]) == 5
    assert kd.sweep_summary(attr).n_pairs.eq(2).all()
    with pytest.raises(ValueError, match="one metric"):
        kd.attribution_error(exact, kd.attribution_sweep(model, clean, donor, metric=LogProb(1)))


def test_attribution_refuses_what_it_cannot_estimate():
    model = tiny_model("tiny-llama")
    clean, donor = random_tokens(1, 4, seed=1), random_tokens(1, 5, seed=2)
    with pytest.raises(ValueError, match="differentiable, positionwise"):
        kd.attribution_sweep(model, clean, clean, metric="top_token_is_donor")
    with pytest.raises(ValueError, match="differ in shape"):
        kd.attribution_sweep(model, clean, donor)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    kd.attribution_sweep(model, clean, clean)
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
