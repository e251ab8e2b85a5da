"""The verdict row (`Verdict`, its `Part`s), the two tables, and the input checks every
claim's function shares. No model and no torch here."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

HOLDS, CONDITIONAL, FAILS = "holds", "holds under conditions", "fails"
# the measurements' intervals neither clear nor exclude the paper's figure
NOT_SETTLED = "not settled"
OUTCOMES = (HOLDS, CONDITIONAL, FAILS, NOT_SETTLED)

# mirrors policies/kvdirect.py's MODES and REPLAY_MODES (importing it would pull in torch)
KVDIRECT_MODES = ("every_layer", "first_layer", "token_ids", "min_bytes")
REPLAY_MODES = ("first_layer", "token_ids")  # block-0 input only: evicted tokens re-run every layer
REBUILD_SHAPES = ("same", "one_token", "one_token_padded8")  # as kv.REBUILD_SHAPES
REFERENCE_POLICIES = ("FullKV", "NoCache")  # claim 5: neither a baseline nor KV-Direct


@dataclass(frozen=True)
class Part:
    """One checkable part of a claim: what the paper says, what was measured, whether it held."""

    name: str
    paper: str
    measured: str
    held: bool


def describe(parts: Sequence[Part], note: str = "") -> str:
    """A verdict's `measured` text: each part's, in order, then an optional note."""
    text = "; ".join(f"{p.name} [{'held' if p.held else 'not held'}]: {p.measured}" for p in parts)
    return f"{text}; {note}" if note else text


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict row. Build it with `Verdict.of`, which writes `measured` from the parts.

    `price`: what the verdict costs, in numbers computed from the rows (e.g. the FLOPs and
    tokens/s of the only mode meeting the claim against FullKV's), so that the verdict
    line alone says it; "" where nothing is paid."""

    claim: str
    paper: str
    verdict: str
    parts: tuple[Part, ...]
    measured: str
    numbers: dict = field(default_factory=dict)
    price: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in OUTCOMES:
            raise ValueError(f"verdict must be one of {list(OUTCOMES)}, got {self.verdict!r}")
        object.__setattr__(self, "parts", tuple(self.parts))
        if not self.parts or not all(isinstance(p, Part) for p in self.parts):
            raise ValueError("parts must be a non-empty sequence of Part")
        if not self.measured.startswith(describe(self.parts)):
            raise ValueError("measured must be written from the parts: use Verdict.of")

    @classmethod
    def of(
        cls,
        claim: str,
        paper: str,
        verdict: str,
        parts: Sequence[Part],
        numbers: dict | None = None,
        note: str = "",
        price: str = "",
    ) -> Verdict:
        return cls(
            claim, paper, verdict, tuple(parts), describe(parts, note), dict(numbers or {}), price
        )

    def headline(self) -> str:
        """The verdict with its price: "holds under conditions: <price>"."""
        return f"{self.verdict}: {self.price}" if self.price else self.verdict


def table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per verdict: claim, paper, verdict, price, measured."""
    cols = ["claim", "paper", "verdict", "price", "measured"]
    return pd.DataFrame([{c: getattr(v, c) for c in cols} for v in verdicts], columns=cols)


def parts_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per part: claim, part, paper, measured, held."""
    return pd.DataFrame(
        [
            {
                "claim": v.claim,
                "part": p.name,
                "paper": p.paper,
                "measured": p.measured,
                "held": p.held,
            }
            for v in verdicts
            for p in v.parts
        ],
        columns=["claim", "part", "paper", "measured", "held"],
    )


# ---- input checks -------------------------------------------------------------------------


def frame(data, what: str, required: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """data (a DataFrame or a list of row dicts) as a non-empty DataFrame with these columns."""
    accepted = f"required: {list(required)}" + (f", optional: {list(optional)}" if optional else "")
    if isinstance(data, (list, tuple)) and all(isinstance(r, dict) for r in data):
        data = pd.DataFrame(list(data))
    if not isinstance(data, pd.DataFrame):  # ValueError for every bad input, by design
        raise ValueError(  # noqa: TRY004
            f"{what} must be a pandas DataFrame or a list of row dicts ({accepted}); "
            f"got {type(data).__name__}"
        )
    if data.empty:
        raise ValueError(f"{what} is empty: no rows to judge ({accepted})")
    missing = [c for c in required if c not in data.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; {accepted}")
    return data.reset_index(drop=True)


def check(
    df: pd.DataFrame,
    what: str,
    *,
    present: Sequence[str] = (),
    names: Sequence[str] = (),
    numeric: Sequence[str] = (),
    lo: float | None = 0.0,
    hi: float | None = None,
) -> pd.DataFrame:
    """Refuse missing values (NaN/None) in any listed column, non-str `names` and non-numeric
    `numeric` columns or values outside [lo, hi]; return a copy with `numeric` as floats."""
    out = df.copy()
    for c in (*present, *names, *numeric):
        bad = df.index[df[c].isna()].tolist()
        if bad:
            raise ValueError(
                f"{what}: column {c!r} is missing (NaN/None) at row(s) {bad[:5]}; "
                "every judged row needs a value there"
            )
    for c in names:
        if not all(isinstance(x, str) for x in df[c]):
            raise ValueError(f"{what}: column {c!r} must hold names (str)")
    for c in numeric:
        try:
            out[c] = pd.to_numeric(df[c]).astype(float)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: column {c!r} must be numeric ({e})") from None
        if (lo is not None and (out[c] < lo).any()) or (hi is not None and (out[c] > hi).any()):
            raise ValueError(
                f"{what}: column {c!r} must lie in [{lo}, {hi}]; got {out[c].min()}..{out[c].max()}"
            )
    return out


def number(x, what: str, lo: float | None = 0.0, inf_ok: bool = False, integer: bool = False):
    kind = numbers.Integral if integer else numbers.Real
    if (
        isinstance(x, bool)
        or not isinstance(x, kind)
        or math.isnan(x)
        or (math.isinf(x) and not inf_ok)
        or (lo is not None and x < lo)
    ):
        raise ValueError(
            f"{what} must be {'an integer' if integer else 'a finite number'}"
            f"{f' >= {lo}' if lo is not None else ''}{' (or inf)' if inf_ok else ''},"
            f" got {x!r}"
        )
    return int(x) if integer else float(x)
