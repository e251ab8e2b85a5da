"""patch_sweep's engine (the sweep package): the exact mode must give, bit for bit, the
results of one full patched forward pass per cell, on every tiny family, site and
per_position setting; the fast mode must stay within a stated tolerance and report its
largest difference as measured. Never timed (benchmarks/bench_patching.py times it)."""

import gc

import pandas as pd
import pytest
import torch

from kvdirect_interp import fast_path, patch_sweep, sweep
from kvdirect_interp.hooks import (
    METRICS,
    SITES,
    capture_residuals,
    check_site,
    forward,
    patch_residual,
    to_tokens,
)
from kvdirect_interp.sweep import engine as sweep_engine
from kvdirect_interp.sweep import exact as sweep_exact
from kvdirect_interp.sweep import fast as sweep_fast
from kvdirect_interp.sweep import probe as sweep_probe
from tests.fixtures import TINY, random_tokens, tiny_model

# families whose bridge runs HF's own modules (the fast path on): the layered pass must run
LAYERED = {"tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-mistral"}
# fp32 tiny models: the fast mode's logits are this close to the exact ones (measured
# about 4e-6; the KL metrics differ by less)
LOGIT_TOL = 1e-4


def sites_of(model):
    out = []
    for s in SITES:
        try:
            out.append(check_site(model, s))
        except ValueError:
            pass
    return out


def one_patch_per_forward(model, clean, donor, *, site, metric, per_position, layers=None):
    """patch_sweep as it was: one full patched forward pass per cell (the reference); a
    list of metrics gives one table per metric, from the same passes."""
    if isinstance(metric, list):
        return dict(
            zip(
                metric,
                _reference(model, clean, donor, site, metric, per_position, layers),
                strict=True,
            )
        )
    return _reference(model, clean, donor, site, [metric], per_position, layers)[0]


def _reference(model, clean, donor, site, metrics, per_position, layers):
    fns = [METRICS[m] if isinstance(m, str) else m for m in metrics]
    names = [m if isinstance(m, str) else m.__name__ for m in metrics]
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    clean_toks = to_tokens(model, clean)
    trace = capture_residuals(model, donor, sites=(site,), layers=layers)
    clean_logits = forward(model, clean_toks)
    n_batch, n_pos = clean_toks.shape
    rows = [[] for _ in fns]
    for layer in layers:
        for pos in range(n_pos) if per_position else [None]:
            patched = patch_residual(
                model, clean_toks, layer=layer, source=trace, positions=pos, site=site
            )
            for out, fn in zip(rows, fns, strict=True):
                values = fn(patched, clean_logits, trace.logits)
                # the baselines: the metric of the unpatched run and of the donor's run
                bc = fn(clean_logits, clean_logits, trace.logits)
                bd = fn(trace.logits, clean_logits, trace.logits)
                for b in range(n_batch):
                    at = range(n_pos) if pos is None else [-1]
                    for p in at:
                        v, c, d = float(values[b, p]), float(bc[b, p]), float(bd[b, p])
                        cell = (layer, b, p, "all") if pos is None else (layer, b, pos, "single")
                        out.append((*cell, v, c, d, (v - c) / (d - c) if d != c else float("nan")))
    columns = ["layer", "batch", "position", "patched"]
    extra = ["baseline_clean", "baseline_donor", "recovery"]
    return [
        pd.DataFrame(out, columns=[*columns, name, *extra])
        for out, name in zip(rows, names, strict=True)
    ]


def pair(n_pos=9, seed=0, n_batch=2):
    return random_tokens(n_batch, n_pos, seed=seed), random_tokens(n_batch, n_pos, seed=seed + 1)


def engine(model, site, clean, donor, *, exact=True, chunk_size=None):
    layers = list(range(model.cfg.n_layers))
    trace = capture_residuals(model, donor, sites=(site,), layers=layers)
    with torch.no_grad():
        clean_logits = forward(model, clean)
    return sweep.Sweep(
        model,
        clean,
        trace,
        clean_logits,
        site=site,
        layers=layers,
        exact=exact,
        chunk_size=chunk_size,
    ), trace


def all_cells(model, n_pos):
    return [(l, p) for l in range(model.cfg.n_layers) for p in [None, *range(n_pos)]]


def max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


# ---- exact: bitwise one patched forward pass per cell ----------------------------------


def test_exact_logits_are_one_patch_per_forward(tiny):
    clean, donor = pair(n_pos=10, seed=1)
    for site in sites_of(tiny):
        sw, trace = engine(tiny, site, clean, donor)
        if _name(tiny) in LAYERED:
            assert sw.path == "layered", sw.reason
        cells = all_cells(tiny, 10)
        with torch.no_grad():
            full = dict(sw.logits(cells, last_only=False))
            last = dict(sw.logits([c for c in cells if c[1] is not None], last_only=True))
        for layer, pos in cells:
            ref = patch_residual(tiny, clean, layer=layer, source=trace, positions=pos, site=site)
            assert torch.equal(full[layer, pos], ref), (site, layer, pos)
            if pos is not None:  # the head packed over cells: the same bits
                assert torch.equal(last[layer, pos], ref[:, -1:]), (site, layer, pos)


def _name(model):
    return next(name for name in TINY if tiny_model(name) is model)


@pytest.mark.parametrize("per_position", [False, True])
def test_exact_sweep_equals_the_reference_table(tiny, per_position):
    clean, donor = pair(n_pos=6, seed=3)
    metrics = list(METRICS)
    for site in sites_of(tiny):
        refs = one_patch_per_forward(
            tiny, clean, donor, site=site, metric=metrics, per_position=per_position
        )
        for metric in metrics:
            df = patch_sweep(
                tiny,
                clean,
                donor,
                site=site,
                metric=metric,
                per_position=per_position,
                progress=False,
            )
            pd.testing.assert_frame_equal(df, refs[metric], check_exact=True)
            assert df.attrs["mode"] == "exact"
            assert df.attrs["max_abs_logit_diff"] is None
            if _name(tiny) in LAYERED:
                assert df.attrs["path"] == "layered", df.attrs["reason"]


def test_exact_sweep_with_a_custom_metric_and_some_layers():
    model = tiny_model("tiny-gemma3")  # sliding-window and global layers
    clean, donor = pair(n_pos=10, seed=5)

    def mean_logit(patched, clean_logits, donor_logits):
        return patched.mean(-1)  # reads every position: given the full logits

    for site in sites_of(model):
        df = patch_sweep(
            model,
            clean,
            donor,
            site=site,
            metric=mean_logit,
            per_position=True,
            layers=[2, 0],
            progress=False,
        )
        ref = one_patch_per_forward(
            model, clean, donor, site=site, metric=mean_logit, per_position=True, layers=[2, 0]
        )
        pd.testing.assert_frame_equal(df, ref, check_exact=True)


def test_exact_tail_passes_only_where_they_gave_the_full_bits(monkeypatch):
    model = tiny_model("tiny-llama")
    clean, donor = pair(n_pos=10, seed=9)
    cells = [(l, p) for l in range(3) for p in range(10)]
    sw, trace = engine(model, "resid_pre", clean, donor)
    with torch.no_grad():
        last = dict(sw.logits(cells, last_only=True))
    assert any(sw.inp.tails.values())  # tail passes ran (and matched) at some positions
    real = sweep_exact.grown_pass

    def off_by_a_bit(*args, **kwargs):
        out = real(*args, **kwargs)
        return out + 1e-3 if kwargs.get("hidden") else out

    monkeypatch.setattr(sweep_exact, "grown_pass", off_by_a_bit)
    other, _ = engine(model, "resid_pre", clean, donor)
    with torch.no_grad():
        checked = dict(other.logits(cells, last_only=True))
    assert set(other.inp.tails.values()) == {False}  # every tail refused: full passes
    for layer, pos in cells:
        ref = patch_residual(model, clean, layer=layer, source=trace, positions=pos)
        assert torch.equal(last[layer, pos], ref[:, -1:])
        assert torch.equal(checked[layer, pos], ref[:, -1:])


def test_whole_residual_patch_gives_the_donor_logits(tiny):
    clean, donor = pair(n_pos=7, seed=7)
    for site in sites_of(tiny):
        df = patch_sweep(tiny, clean, donor, site=site, progress=False)
        assert (df.kl_to_donor == 0.0).all()


# ---- fast: within tolerance, its largest difference reported as measured -----------------


@pytest.mark.parametrize("per_position", [False, True])
def test_fast_sweep_reports_its_measured_difference(tiny, per_position):
    clean, donor = pair(n_pos=9, seed=11)
    for site in sites_of(tiny):
        exact = patch_sweep(
            tiny, clean, donor, site=site, per_position=per_position, progress=False
        )
        fast = patch_sweep(
            tiny,
            clean,
            donor,
            site=site,
            per_position=per_position,
            progress=False,
            exact=False,
            check="all",
        )
        assert fast.attrs["mode"] == "fast"
        assert list(fast.columns) == list(exact.columns)
        pd.testing.assert_frame_equal(
            fast.drop(columns=["kl_to_donor", "recovery"]),
            exact.drop(columns=["kl_to_donor", "recovery"]),
        )
        measured = float((fast.kl_to_donor - exact.kl_to_donor).abs().max())
        if fast.attrs["path"] == "full":  # no layered pass: every cell exact already
            assert measured == 0.0 and fast.attrs["max_abs_metric_diff"] is None
            continue
        assert fast.attrs["path"] == "batched"
        assert fast.attrs["checked_cells"] == tiny.cfg.n_layers * (9 if per_position else 1)
        assert fast.attrs["max_abs_metric_diff"] == measured
        assert fast.attrs["max_abs_logit_diff"] <= LOGIT_TOL
        if not per_position:
            assert measured == 0.0  # whole-residual cells are layered passes in both modes


def test_fast_logit_difference_is_the_measured_one(tiny):
    clean, donor = pair(n_pos=11, seed=13)
    site = "resid_pre"
    sw, trace = engine(tiny, site, clean, donor, exact=False)
    if sw.path == "full":
        pytest.skip(f"no layered pass for this family: {sw.reason}")
    cells = [(l, p) for l in range(tiny.cfg.n_layers) for p in range(11)]
    with torch.no_grad():
        fast = dict(sw.logits(cells, last_only=True))
        exact = dict(sw.logits(cells, last_only=True, exact=True))
    measured = max(max_diff(fast[c], exact[c]) for c in cells)
    assert measured <= LOGIT_TOL
    df = patch_sweep(
        tiny,
        clean,
        donor,
        site=site,
        per_position=True,
        exact=False,
        check="all",
        progress=False,
    )
    assert df.attrs["max_abs_logit_diff"] == measured


def test_fast_full_logits_keep_the_clean_logits_before_the_patch():
    model = tiny_model("tiny-llama")
    clean, donor = pair(n_pos=10, seed=17)
    sw, trace = engine(model, "resid_mid", clean, donor, exact=False, chunk_size=4)
    with torch.no_grad():
        clean_logits = forward(model, clean)
        for (layer, pos), logits in sw.logits(all_cells(model, 10), last_only=False):
            ref = patch_residual(
                model, clean, layer=layer, source=trace, positions=pos, site="resid_mid"
            )
            assert logits.shape == ref.shape
            assert max_diff(logits, ref) <= LOGIT_TOL
            if pos is not None:
                assert torch.equal(logits[:, :pos], clean_logits[:, :pos])


@pytest.mark.parametrize("name", ["tiny-mistral", "tiny-gemma3"])
def test_fast_mode_past_the_sliding_window(name):
    model = tiny_model(name)  # windows of 16 and 8 tokens
    clean, donor = pair(n_pos=21, seed=19, n_batch=1)
    for site in sites_of(model):
        df = patch_sweep(
            model,
            clean,
            donor,
            site=site,
            per_position=True,
            exact=False,
            check="all",
            progress=False,
        )
        assert df.attrs["path"] == "batched"
        assert df.attrs["max_abs_logit_diff"] <= LOGIT_TOL, site


# ---- chunking ------------------------------------------------------------------------------


def test_chunking_gives_the_same_results(tiny):
    clean, donor = pair(n_pos=9, seed=23)
    for site in sites_of(tiny):
        exact = {
            c: patch_sweep(
                tiny, clean, donor, site=site, per_position=True, chunk_size=c, progress=False
            )
            for c in [None, 1, 2]
        }
        for df in exact.values():  # the exact mode does not batch: chunk_size changes nothing
            pd.testing.assert_frame_equal(df, exact[None], check_exact=True)
        for c in [None, 1, 2]:
            fast = patch_sweep(
                tiny,
                clean,
                donor,
                site=site,
                per_position=True,
                exact=False,
                chunk_size=c,
                check="all",
                progress=False,
            )
            measured = float((fast.kl_to_donor - exact[None].kl_to_donor).abs().max())
            if fast.attrs["path"] == "batched":
                assert fast.attrs["max_abs_metric_diff"] == measured
                assert fast.attrs["max_abs_logit_diff"] <= LOGIT_TOL
            else:
                assert measured == 0.0


def test_automatic_groups_bound_memory(monkeypatch):
    model = tiny_model("tiny-llama")  # 3 layers
    clean, donor = pair(n_pos=12, seed=29)
    pre, _ = engine(model, "resid_pre", clean, donor, exact=False)
    post, _ = engine(model, "resid_post", clean, donor, exact=False)
    assert sweep_fast.groups(model, pre.inp, 4, [2, 0, 1], None, True) == [[0, 1, 2]]
    # resid_post of the last layer has no layer to run: it goes alone
    assert sweep_fast.groups(model, post.inp, 4, [0, 1, 2], None, True) == [[0, 1], [2]]
    assert sweep_fast.groups(model, pre.inp, 4, [0, 1, 2], 2, True) == [[0, 1], [2]]
    monkeypatch.setattr(sweep_fast, "FAST_BYTES", 1)  # no room: one cell per pass
    assert sweep_fast.groups(model, pre.inp, 4, [0, 1, 2], None, True) == [[0], [1], [2]]
    df = patch_sweep(
        model, clean, donor, per_position=True, exact=False, check="all", progress=False
    )
    assert df.attrs["max_abs_logit_diff"] <= LOGIT_TOL


def test_check_cells_are_spread_and_counted():
    cells = [(l, p) for l in range(3) for p in range(5)]
    assert sweep.check_cells(cells, "all") == cells
    assert sweep.check_cells(cells, 0) == []
    assert sweep.check_cells(cells, 1) == [(0, 0)]
    picked = sweep.check_cells(cells, 4)
    assert len(picked) == 4 and picked[0] == (0, 0) and picked[-1] == (2, 4)
    model = tiny_model("tiny-llama")
    clean, donor = pair(n_pos=6, seed=31)
    df = patch_sweep(model, clean, donor, per_position=True, exact=False, check=3, progress=False)
    assert df.attrs["checked_cells"] == 3


# ---- paths, hooks and the shared tree --------------------------------------------------------


def test_bridge_only_models_and_hooked_models_take_full_passes():
    gpt2 = tiny_model("tiny-gpt2")  # its bridge splits the fused QKV: no fast path
    clean, donor = pair(n_pos=6, seed=37)
    df = patch_sweep(gpt2, clean, donor, per_position=True, progress=False)
    assert df.attrs["path"] == "full" and "fast path is off" in df.attrs["reason"]
    model = tiny_model("tiny-llama")
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: seen.append(1))]):
        df = patch_sweep(model, clean, donor, per_position=True, exact=False, progress=False)
        ref = one_patch_per_forward(
            model, clean, donor, site="resid_pre", metric="kl_to_donor", per_position=True
        )
    assert df.attrs["path"] == "full" and "hook" in df.attrs["reason"]
    assert seen  # the user's hook ran in every pass
    pd.testing.assert_frame_equal(df, ref, check_exact=True)


def test_a_failed_probe_falls_back_to_full_passes(monkeypatch):
    model = tiny_model("tiny-mistral")
    monkeypatch.setattr(sweep_probe, "_LAYERED", type(sweep_probe._LAYERED)())
    monkeypatch.setattr(sweep_probe, "_probe", lambda model, lay, site: "differs (test)")
    clean, donor = pair(n_pos=5, seed=41)
    df = patch_sweep(model, clean, donor, per_position=True, progress=False)
    assert df.attrs["path"] == "full" and df.attrs["reason"] == "differs (test)"
    ref = one_patch_per_forward(
        model, clean, donor, site="resid_pre", metric="kl_to_donor", per_position=True
    )
    pd.testing.assert_frame_equal(df, ref, check_exact=True)


def test_the_shared_plain_tree_is_left_as_it_was():
    model = tiny_model("tiny-gemma3")
    fast_path(model).status()  # built (lazily, on first use)
    plain = fast_path(model).plain
    layers = list(plain.model.layers)
    clean, donor = pair(n_pos=8, seed=43)
    with torch.no_grad():
        before = forward(model, clean)
    for site in sites_of(model):
        for exact in (True, False):
            patch_sweep(
                model, clean, donor, site=site, per_position=True, exact=exact, progress=False
            )
    assert fast_path(model).plain is plain and list(plain.model.layers) == layers
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    with torch.no_grad():
        assert torch.equal(forward(model, clean), before)
        assert torch.equal(model(clean), before)


def test_the_runner_goes_with_its_tree():
    model = tiny_model("tiny-qwen2")
    clean, donor = pair(n_pos=5, seed=47)
    patch_sweep(model, clean, donor, progress=False)
    assert fast_path(model).plain in sweep_probe._LAYERED
    n = len(sweep_probe._LAYERED)
    fast_path(model).reset()  # the fast path drops its tree; the next forward rebuilds it
    gc.collect()
    assert len(sweep_probe._LAYERED) == n - 1
    df = patch_sweep(model, clean, donor, progress=False)
    assert df.attrs["path"] == "layered"


def test_progress_counts_cells(monkeypatch):
    totals, updates = [], []

    class Bar:
        def __init__(self, total, desc, disable):
            totals.append(total)

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(sweep_engine, "tqdm", Bar)
    model = tiny_model("tiny-llama")
    clean, donor = pair(n_pos=6, seed=53)
    for exact in (True, False):
        patch_sweep(model, clean, donor, per_position=True, exact=exact, progress=True)
    assert totals == [3 * 6, 3 * 6] and sum(updates) == 2 * 3 * 6


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_arguments_are_refused():
    model = tiny_model("tiny-llama")
    clean, donor = pair(n_pos=5, seed=59)
    with pytest.raises(ValueError, match="exact must be True or False"):
        patch_sweep(model, clean, donor, exact="yes", progress=False)
    for bad in [0, -2, 1.5, True]:
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            patch_sweep(model, clean, donor, exact=False, chunk_size=bad, progress=False)
    for bad in [-1, "some", 2.0, None]:
        with pytest.raises(ValueError, match="check must be a non-negative integer or 'all'"):
            patch_sweep(model, clean, donor, exact=False, check=bad, progress=False)
    with pytest.raises(ValueError, match="unknown site"):
        patch_sweep(model, clean, donor, site="resid_mdi", progress=False)
    with pytest.raises(ValueError, match="differ in shape"):
        patch_sweep(model, clean, donor[:, :4], exact=False, progress=False)
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        patch_sweep(model, clean, donor, layers=[3], exact=False, progress=False)
