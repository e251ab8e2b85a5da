"""The paper's figures beside ours: per claim, what the paper reports (its abstract and
diagram: the only parts of it known here), what each studied model's stored tables give,
and the verdict with its price. Every number of ours comes from `results.stored_verdict_rows`
(the verdict functions on the committed tables), never typed; every merge rewrites the table
in the top-level README between its markers, and a test checks it is current."""

from __future__ import annotations

from pathlib import Path

from ..results import stored_verdict_rows
from .report import replace_block, studied

BEGIN = "<!-- paper beside ours: written by every `kvdirect-interp study` merge; do not edit -->"
END = "<!-- end of paper beside ours -->"

# the paper's own figures (arXiv 2603.19664, abstract and method diagram)
PAPER = {
    1: "K/V recomputed from the residual bit-identically (zero error), six models",
    2: "cross-task residual patching: D_KL = 0 at every layer",
    3: "no cache: token-identical greedy output on every model",
    4: "5 KB vs 136 KB per token; peak 42 MB vs 103 MB over 20 turns (Gemma 3-4B)",
    5: "100% token match at every budget; H2O, StreamingLLM, SnapKV, TOVA, window: 5-28%",
    6: "recomputing K/V up to 5x faster than reading them, at moderate batch sizes",
}


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f} MB"


def _kb(b: float) -> str:
    return f"{b / 1e3:,.1f} KB"


def _ours(claim: int, verdicts: dict) -> str:
    """Our figure for one claim on one model, from its verdicts' numbers (slice -> Verdict)."""
    if claim == 1:
        parts = []
        for dtype, v in sorted(verdicts.items()):
            n = v.numbers["layers"]
            same, one = v.numbers["same"], v.numbers["one_token"]
            parts.append(
                f"{dtype}: {same['bitwise_layers']}/{n} layers bitwise at the pass's shape, "
                f"{one['bitwise_layers']}/{n} one token at a time"
            )
        return "; ".join(parts)
    v = next(iter(verdicts.values()))  # claims 2-4 have one slice
    if claim == 2:
        return (
            f"max D_KL {v.numbers['kl_whole_max']:.3g} over {v.numbers['layers']} layers x "
            f"{v.numbers['task_pairs']} pairs ({v.numbers['kl_single_position_max']:.3g} "
            "patching one position)"
        )
    if claim == 3:
        return f"{v.numbers['identical_runs']}/{v.numbers['runs']} greedy runs identical"
    if claim == 4:
        modes = v.numbers["modes"]
        first = next((r for r in modes.values() if r["mode"] == "first_layer"), None)
        per_token = (
            f"first_layer {_kb(first['bytes_per_token'])} vs K/V "
            f"{_kb(v.numbers['kv_bytes_per_token'])} per token; "
            if first
            else ""
        )
        peaks = ", ".join(f"{k} {_mb(r['peak_bytes'])}" for k, r in modes.items())
        full = _mb(v.numbers["fullkv_peak_bytes"])
        return f"{per_token}peak (held + transient): FullKV {full}, {peaks}"
    if claim == 5:
        parts = []
        for name, v in verdicts.items():
            means = [m[0] for m in v.numbers["baseline_token_match"].values()]
            parts.append(
                f"{name}: KV-Direct min {v.numbers['kvdirect_min_token_match']:.0%}, baselines "
                f"{min(means):.0%}-{max(means):.0%} ({v.numbers['baselines_above']} above 28%, "
                f"{v.numbers['baselines_not_settled']} not settled)"
            )
        return "; ".join(parts)
    parts = []
    for tier, v in verdicts.items():
        lo = v.numbers["min_rebuild_over_read"]
        parts.append(
            f"{tier}: best {1 / lo:.2g}x faster" if lo < 1 else f"{tier}: best {lo:.2g}x slower"
        )
    return "recomputing vs reading, " + "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _short(found: dict) -> str:
    """Each slice's outcome, then the price once where the slices share it."""
    heads = "; ".join(
        (f"{s}: " if len(found) > 1 else "") + f"**{v.verdict}**" for s, v in found.items()
    )
    prices = list(dict.fromkeys(v.price for v in found.values() if v.price))
    return heads + "".join(f". {p[0].upper()}{p[1:]}" for p in prices)


def table(out: Path | str, names=None, size: str = "full", short: bool = False) -> str:
    """The markdown table: one row per claim, the paper's figure, then per studied model our
    figure and the verdict of each slice with its price. short=True (the README's): the
    verdicts and their prices only, each price once per cell."""
    names = studied(out) if names is None else list(names)
    lines = [
        "| claim | the paper | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    per_model = {n: stored_verdict_rows(n, root=out, size=size) for n in names}
    for claim, paper in PAPER.items():
        cells = []
        for name in names:
            rows = [r for r in per_model[name] if r["claim"] == claim]
            found = {r["slice"]: r["verdict"] for r in rows if r["verdict"] is not None}
            if not found:
                cells.append(rows[0]["note"] if rows else "")
                continue
            if short:
                cells.append(f"{_short(found)} ({rows[0]['units']})")
                continue
            heads = "; ".join(
                (f"{s}: " if len(found) > 1 else "") + f"**{v.headline()}**"
                for s, v in found.items()
            )
            cells.append(f"{_ours(claim, found)}. {heads} ({rows[0]['units']})")
        lines.append(f"| {claim} | {paper} | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def write(readme: Path | str, out: Path | str, size: str = "full") -> Path:
    """Put the short `table` between its markers in `readme` (appended where they are
    absent); the documentation site renders the full one at build time."""
    return replace_block(readme, BEGIN, END, table(out, size=size, short=True))
