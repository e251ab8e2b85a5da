"""One stored unit measured again, live, and compared with its stored rows: how a notebook
shows that the committed full study is what this code measures on this machine. Only what
a rerun must reproduce is compared (token match, bytes, bitwise flags, KL within a
tolerance); timings belong to the machine and are never compared."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..generation import HELD_KINDS
from .measure import DTYPES, MEASURE, Context
from .units import Unit


def stored_unit(df: pd.DataFrame, **match) -> tuple[dict, pd.DataFrame]:
    """(settings, rows) of the one stored unit whose settings include every `match` item
    (e.g. prompt=0, budget=16, policy="H2O"). No unit, or several, is an error naming
    what the table holds."""
    if df is None or df.empty or "unit_settings" not in df.columns:
        raise ValueError("not a stored study table (no unit_settings column)")
    found = {}
    for text, rows in df.groupby("unit_settings", sort=False):
        settings = json.loads(text)
        if all(settings.get(k) == v for k, v in match.items()):
            found[text] = (settings, rows.reset_index(drop=True))
    if len(found) != 1:
        some = [json.loads(t) for t in df.unit_settings.unique()[:3]]
        raise ValueError(
            f"{len(found)} stored units match {match}; exactly one must "
            f"(settings look like: {some})"
        )
    return next(iter(found.values()))


def remeasure(
    model, model_name: str, claim: int, settings: dict, *, scratch: Path | str | None = None
) -> pd.DataFrame:
    """The rows of one unit (`claim`, `settings`) measured now on `model`, through the same
    measurement function the study ran (measure.py). The model's dtype must be the unit's
    (settings "dtype", float32 when absent)."""
    if claim not in MEASURE:
        raise ValueError(f"unknown claim {claim!r}; accepted: {sorted(MEASURE)}")
    dtype = settings.get("dtype", "float32")
    have = next(model.parameters()).dtype
    if DTYPES.get(dtype) != have:
        raise ValueError(f"the unit is measured in {dtype}; the model given is {have}")
    folder = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp(prefix="recheck-"))
    ctx = Context(lambda _: model, scratch=folder, progress=False)  # a notebook cell: quiet
    return pd.DataFrame(MEASURE[claim](Unit(model_name, claim, dict(settings)), ctx))


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if pd.isna(a) and pd.isna(b):
        return True  # both missing (e.g. no first divergence)
    return bool(a == b)


def compare(
    stored: pd.DataFrame,
    fresh: pd.DataFrame,
    *,
    on: Sequence[str],
    exact: Sequence[str] = (),
    close: dict[str, float] | None = None,
) -> pd.DataFrame:
    """One row per compared column: column, rule ("exact", or "|diff| <= atol"), rows,
    equal (bool), max_abs_diff (numeric columns). Rows are matched on the `on` columns;
    every fresh row must have its stored row (a chat re-measured over its first turns is
    compared on those turns), and a column must exist on both sides."""
    close = dict(close or {})
    cols = [*on, *exact, *close]
    for side, df in (("stored", stored), ("fresh", fresh)):
        lacking = [c for c in cols if c not in df.columns]
        if lacking:
            raise ValueError(f"the {side} rows lack column(s) {lacking}")
    merged = fresh[cols].merge(stored[cols], on=list(on), how="left", suffixes=("", "_stored"))
    if len(merged) != len(fresh):
        raise ValueError(f"the stored rows repeat a key of {list(on)}")
    if merged[[f"{c}_stored" for c in [*exact, *close]]].isna().all(axis=1).any():
        raise ValueError(f"some fresh rows have no stored row with the same {list(on)}")
    out = []
    for col in [*exact, *close]:
        a, b = merged[col], merged[f"{col}_stored"]
        numeric = pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b)
        diff = float((a.astype(float) - b.astype(float)).abs().max()) if numeric else None
        if col in close:
            ok = numeric and bool(((a - b).abs() <= close[col]).all())
            rule = f"|diff| <= {close[col]:g}"
        else:
            ok = all(_same(x, y) for x, y in zip(a, b, strict=True))
            rule = "exact"
        out.append(
            {"column": col, "rule": rule, "rows": len(merged), "equal": ok, "max_abs_diff": diff}
        )
    return pd.DataFrame(out)


# per claim: the columns a rerun must reproduce. Claim 6's rebuild-vs-read units are
# timings only; its decode units (settings measure="decode") compare what each policy held
# and its formula FLOPs, never its speed.
RULES: dict[int, dict] = {
    1: {"on": ["layer", "tensor", "shape"], "exact": ["reference", "bitwise_equal", "max_ulp"]},
    2: {"on": ["layer"], "exact": ["kl_whole"], "close": {"kl_last": 1e-4}},
    3: {
        "on": ["mode"],
        "exact": ["token_match", "first_divergence", "steps", "equal"],
        "close": {"noise": 1e-5},
    },
    4: {
        "on": ["turn"],
        "exact": [
            "total_tokens",
            "tokens_generated",
            "kv_bytes",
            "residual_bytes",
            "token_ids_bytes",
            "held_bytes",
            "rebuilt_bytes_max",
        ],
    },
    5: {
        "on": ["policy", "budget"],
        "exact": ["token_match", "common_prefix", "logits_bitwise", "bytes_held", "fullkv_bytes"],
        "close": {"kl_mean": 1e-4, "kl_max": 1e-4},
    },
    6: {
        "on": ["policy", "context"],
        "exact": [
            "prompt_tokens",
            "new_tokens",
            "bytes_held",
            *HELD_KINDS,
            "rebuilt_bytes_max",
            "gflops_per_step",
        ],
    },
}


def recheck(
    model, model_name: str, claim: int, table: pd.DataFrame, *, overrides=None, **match
) -> pd.DataFrame:
    """Measure the stored unit matching `match` again on `model` (with `overrides` of its
    settings, e.g. {"turns": 2} to replay a chat's first turns only) and compare it with
    the stored rows by RULES[claim]: `compare`'s table, its attrs["settings"] the unit's."""
    if claim not in RULES:
        raise ValueError(
            f"claim {claim} has nothing a rerun must reproduce (timings only); "
            f"accepted: {sorted(RULES)}"
        )
    settings, rows = stored_unit(table, **match)
    if claim == 6 and settings.get("measure") != "decode":
        raise ValueError(
            "a claim-6 rebuild-vs-read unit is timings only: nothing a rerun must reproduce; "
            'its decode units (measure="decode") compare bytes held and FLOPs'
        )
    settings = {**settings, **(overrides or {})}
    fresh = remeasure(model, model_name, claim, settings)
    out = compare(rows, fresh, **RULES[claim])
    out.attrs["settings"] = settings
    return out
