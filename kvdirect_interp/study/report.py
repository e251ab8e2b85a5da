"""OUT/<model>/README.md: what the stored study of one model holds and the run that made it
(dates, machine, commit, time taken per claim), written from the JSON-lines records by
every merge, never by hand."""

from __future__ import annotations

from pathlib import Path

from ..results import stored_verdicts
from .plan import plan
from .store import ClaimStore

CLAIMS_TITLES = {
    1: "K/V are projections of the residual (reconstruction report)",
    2: "cross-task patching gives D_KL = 0",
    3: "generation without a cache is token-identical",
    4: "KV-Direct memory over a 20-turn chat",
    5: "token match against the eviction baselines",
    6: "rebuilding K/V against reading them",
}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _cell(value) -> str:
    """A markdown table cell: missing -> "none", pipes escaped."""
    text = "none" if value is None or value != value else str(value)  # NaN != NaN
    return text.replace("|", "\\|")


def describe(out: Path | str, model_name: str, model, size: str = "full") -> str:
    """The markdown of OUT/<model>/README.md for the `size` plan."""
    lines = [
        f"# Study of {model_name} ({size})",
        "",
        "Written by `kvdirect-interp study` from the unit records (`claim<N>.jsonl`); the",
        "merged tables are `claim<N>.parquet`. Each row of them carries its own provenance.",
        "",
        "| claim | measures | units done / planned | dates (UTC) | CPU | threads | commit | "
        "time taken (sum of units) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for claim, title in CLAIMS_TITLES.items():
        keys = {u.key for u in plan(model_name, model, claim, size)}
        records = ClaimStore(Path(out), model_name, claim).records()
        done = {r["key"]: r for r in records if r["key"] in keys}
        if not done:
            lines.append(f"| {claim} | {title} | 0 / {len(keys)} | | | | | |")
            continue
        prov = [r["provenance"] for r in done.values()]
        dates = sorted(p["date_utc"][:10] for p in prov)
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        cpu = "; ".join(sorted({p["cpu"] for p in prov}))
        threads = ", ".join(str(t) for t in sorted({p["torch_threads"] for p in prov}))
        commits = ", ".join(sorted({p["git_commit"][:7] for p in prov}))
        dirty = " (uncommitted changes)" if any(p.get("git_dirty") for p in prov) else ""
        seconds = sum(r["seconds"] for r in done.values())
        lines.append(
            f"| {claim} | {title} | {len(done)} / {len(keys)} | {span} | {cpu} | {threads} | "
            f"{commits}{dirty} | {_hours(seconds)} |"
        )
    lines += [
        "",
        "Units not done are not in the tables; `kvdirect-interp study --model "
        f"{model_name} --size {size}` resumes them. Time taken is the units' wall-clock "
        "seconds on the machine named: bookkeeping, not a result.",
        "",
        "## Verdicts from the stored rows",
        "",
        "Computed by `kvdirect_interp.results.stored_verdicts` (the `verdicts` functions on",
        "the tables above, as the notebooks apply them); a claim whose plan is not finished",
        "is judged on the units done, which its row counts.",
        "",
        "| claim | slice | units | verdict | measured |",
        "|---|---|---|---|---|",
    ]
    for row in stored_verdicts(model_name, model, root=out, size=size).itertuples():
        cells = [row.claim, row.slice, row.units, row.verdict, row.measured]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)


def write(out: Path | str, model_name: str, model, size: str = "full") -> Path:
    path = Path(out) / model_name / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(describe(out, model_name, model, size))
    return path
