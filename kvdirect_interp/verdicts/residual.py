"""Claims 1-3, about the residual stream as the model's state: K/V are projections of it
(claim 1), patching it carries the output (claim 2), generating without a cache repeats the
cached tokens (claim 3)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import pandas as pd

from .rows import CONDITIONAL, FAILS, HOLDS, REBUILD_SHAPES, Part, Verdict, check, frame, number


def claim1(report: pd.DataFrame) -> Verdict:
    """Claim 1, "K/V are deterministic projections of the residual, recomputed bit-identically".

    Input: `kv.reconstruction_report`'s DataFrame (layer, tensor, shape, reference,
    bitwise_equal, max_abs_err, max_ulp). Rows whose reference is missing (a hook the bridge
    does not fire) are not compared and not assumed equal. A layer is bitwise at a shape when
    every compared tensor of it (k, v, rot_k) is.
    Parts: "same GEMM shape": every layer bitwise when rebuilt with the forward pass's shapes
    (shape "same"); "any shape": every layer also bitwise rebuilt one token at a time (a 1-row
    GEMM, shape "one_token"). Rows of shape "one_token_padded8" are reported, not judged.
    Rule: HOLDS if both parts hold; CONDITIONAL if only "same GEMM shape" does (bit identity
    is then a property of GEMM shapes and kernels, not of the algebra); FAILS if any layer
    differs even at the same shape.
    """
    what = "reconstruction report"
    df = frame(
        report,
        what,
        ("layer", "tensor", "shape", "reference", "bitwise_equal", "max_abs_err", "max_ulp"),
    )
    check(df, what, present=("layer", "tensor", "shape"))
    unknown = sorted(set(df["shape"]) - set(REBUILD_SHAPES))
    if unknown:
        raise ValueError(f"{what}: unknown shape(s) {unknown}; accepted: {list(REBUILD_SHAPES)}")
    done = check(
        df[df.reference.notna()],
        f"compared rows of the {what}",
        present=("bitwise_equal",),
        numeric=("max_abs_err", "max_ulp"),
    )
    done["bitwise_equal"] = done.bitwise_equal.astype(bool)
    layers = sorted(int(l) for l in df.layer.unique())
    res = {}
    for shape in REBUILD_SHAPES:
        rows = done[done["shape"] == shape]
        if rows.empty and shape != "one_token_padded8":
            raise ValueError(
                f"{what} has no compared row of shape {shape!r}; claim 1 needs "
                "shapes 'same' and 'one_token' ('one_token_padded8' optional)"
            )
        lacking = sorted(set(layers) - {int(l) for l in rows.layer})
        if lacking and not rows.empty:
            raise ValueError(f"{what}: layer(s) {lacking} have no compared row of shape {shape!r}")
        if not rows.empty:
            ok = rows.groupby("layer").bitwise_equal.all()
            res[shape] = {
                "bitwise_layers": int(ok.sum()),
                "differing_layers": [int(l) for l in ok.index[~ok]],
                "max_ulp": int(rows.max_ulp.max()),
                "max_abs_err": float(rows.max_abs_err.max()),
            }

    def text(r: dict) -> str:
        bad = r["differing_layers"]
        return f"{r['bitwise_layers']}/{len(layers)} layers bitwise" + (
            f" (layers {bad[:6]} differ: up to {r['max_ulp']} ULP, {r['max_abs_err']:.1e} abs)"
            if bad
            else ""
        )

    skipped = int(df.reference.isna().sum())
    same_ok, one_ok = (not res[s]["differing_layers"] for s in ("same", "one_token"))
    parts = (
        Part(
            "same GEMM shape",
            "zero error, bit-identical",
            text(res["same"])
            + (f" ({skipped} row(s) not compared: hook not fired)" if skipped else ""),
            same_ok,
        ),
        Part(
            "any shape",
            "recomputed from one residual vector per token",
            text(res["one_token"])
            + (
                ""
                if one_ok
                else "; bit identity is a property of "
                "GEMM shapes and kernels: a 1-row GEMM takes "
                "another kernel"
            ),
            one_ok,
        ),
    )
    note = (
        f"one token padded to 8 rows (not judged): {text(res['one_token_padded8'])}"
        if "one_token_padded8" in res
        else ""
    )
    verdict = HOLDS if same_ok and one_ok else CONDITIONAL if same_ok else FAILS
    return Verdict.of(
        "1 K/V are projections of the residual",
        "zero error, bit-identical",
        verdict,
        parts,
        {"layers": len(layers), "not_compared_rows": skipped, **res},
        note,
    )


def claim2(
    *,
    kl_whole_max: float,
    kl_single_position_max: float,
    layers: int,
    sites: Sequence[str] | int,
    task_pairs: int,
) -> Verdict:
    """Claim 2, "cross-task residual patching at every layer gives D_KL = 0".

    Input: the largest D_KL(donor || patched) over layers and sites with the whole residual
    patched (every position), the largest with a single position patched, the number of
    layers, the sites (names, or a count) and the number of task pairs.
    Parts: "whole residual patched": max KL == 0.0 exactly (float64 KL is exactly 0 for equal
    logits). That is so by construction of a layered computation: the output is a function
    of the residual handed to the next layer, so patching all of it yields the donor's
    output; the part's text says so. "single position" (a contrast, always reported): KL > 0
    somewhere with one position patched, since the other positions still carry the clean
    prompt. Rule: HOLDS if the whole-residual KL is exactly 0; FAILS otherwise. The contrast
    never changes the verdict.
    """
    whole = number(kl_whole_max, "kl_whole_max", lo=None, inf_ok=True)
    single = number(kl_single_position_max, "kl_single_position_max", lo=None, inf_ok=True)
    layers = number(layers, "layers", lo=1, integer=True)
    task_pairs = number(task_pairs, "task_pairs", lo=1, integer=True)
    if isinstance(sites, numbers.Integral) and not isinstance(sites, bool):
        n_sites = number(sites, "sites", lo=1, integer=True)
        site_text = f"{n_sites} site(s)"
    elif (
        isinstance(sites, Sequence)
        and not isinstance(sites, str)
        and sites
        and all(isinstance(s, str) for s in sites)
    ):
        n_sites, site_text = len(sites), ", ".join(sites)
    else:
        raise ValueError(
            f"sites must be a non-empty sequence of site names or a count >= 1, got {sites!r}"
        )
    parts = (
        Part(
            "whole residual patched",
            "D_KL = 0 at every layer",
            f"max KL {whole:.3g} over {layers} layers x {site_text} x {task_pairs} task "
            "pair(s); 0 by construction of a layered computation (the output is a "
            "function of the residual handed on)",
            whole == 0.0,
        ),
        Part(
            "single position",
            "(contrast, not in the paper)",
            f"max KL {single:.3g} with one position patched"
            + ("" if single > 0 else ": no contrast seen"),
            single > 0,
        ),
    )
    return Verdict.of(
        "2 residual patching gives D_KL = 0",
        "D_KL = 0 at every layer",
        HOLDS if whole == 0.0 else FAILS,
        parts,
        {
            "kl_whole_max": whole,
            "kl_single_position_max": single,
            "layers": layers,
            "sites": n_sites,
            "task_pairs": task_pairs,
        },
    )


def claim3(runs, *, logit_noise: float, noise_margin_factor: float = 10.0) -> Verdict:
    """Claim 3, "without a cache, greedy generation is token-identical".

    Input: one row per run (DataFrame or list of dicts): token_match (share of greedy tokens
    equal to the cached run's), first_divergence (step of the first differing token) and
    divergence_margin (the cached run's top-2 logit margin at that step), both missing when
    the run is identical; optional run (a label). logit_noise: the measured max |cached -
    uncached| logit difference on steps with the same context (fp noise of other GEMM shapes).
    Parts: "tokens identical": every run 100% equal (the logit noise is reported, not a
    failure); "divergences at near-ties": every divergence has a top-2 margin <=
    noise_margin_factor (default 10) x logit_noise, i.e. fp noise decided a near-tie argmax
    (vacuously held without divergences). Rule: HOLDS if every run is token-identical;
    CONDITIONAL if not, but every divergence is at a near-tie; FAILS if a divergence happens
    at a larger margin.
    """
    what = "claim-3 runs"
    df = frame(runs, what, ("token_match", "first_divergence", "divergence_margin"), ("run",))
    df = check(df, what, numeric=("token_match",), hi=1.0)
    noise = number(logit_noise, "logit_noise")
    threshold = number(noise_margin_factor, "noise_margin_factor") * noise
    same, diverged = df[df.token_match == 1.0], df[df.token_match < 1.0]
    if same.first_divergence.notna().any():
        raise ValueError(
            f"{what}: a run with token_match 1.0 has a first_divergence; leave it "
            "missing (None/NaN) for identical runs"
        )
    diverged = check(
        diverged,
        f"{what} that diverged (token_match < 1)",
        numeric=("first_divergence", "divergence_margin"),
    )
    labels = df["run"] if "run" in df.columns else pd.Series(df.index, index=df.index)
    far = diverged[diverged.divergence_margin > threshold]
    identical, near = diverged.empty, far.empty
    near_text = (
        "no divergence"
        if identical
        else (
            f"{len(diverged) - len(far)}/{len(diverged)} divergence(s) at a top-2 margin <= "
            f"{noise_margin_factor:g} x noise = {threshold:.1e} (largest margin "
            f"{diverged.divergence_margin.max():.2e})"
            + (
                f"; runs {labels[far.index].tolist()[:5]} diverge beyond fp noise"
                if not near
                else ""
            )
        )
    )
    parts = (
        Part(
            "tokens identical",
            "token-identical (greedy)",
            f"{len(same)}/{len(df)} run(s) 100% equal (min {df.token_match.min():.0%}); "
            f"max logit drift {noise:.1e} (reported, not a failure)",
            identical,
        ),
        Part(
            "divergences at near-ties", "(condition: fp noise decides a near-tie)", near_text, near
        ),
    )
    return Verdict.of(
        "3 no-cache generation is token-identical",
        "token-identical (greedy)",
        HOLDS if identical else CONDITIONAL if near else FAILS,
        parts,
        {
            "runs": len(df),
            "identical_runs": len(same),
            "min_token_match": float(df.token_match.min()),
            "logit_noise": noise,
            "near_tie_threshold": threshold,
            "max_divergence_margin": None if identical else float(diverged.divergence_margin.max()),
        },
    )
