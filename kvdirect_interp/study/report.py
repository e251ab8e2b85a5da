"""OUT/<model>/README.md: what the stored study of one model holds and the run that made it
(dates, machine, commit, time taken per claim), and OUT/README.md's verdict table across
models, both written from the stored records by every merge, never by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..models import model_names
from ..results import stored_verdicts
from ..snapshot import peek_session
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


def unit_seconds(record: dict) -> float:
    """A unit's wall-clock seconds over every call that measured it. A claim-4 chat resumed
    from its snapshot has rows with `part` > 0, and its record's own `seconds` are the last
    call's only, so the turns measured by earlier calls are added from their rows."""
    rows = record["rows"]
    last = max((r.get("part", 0) for r in rows), default=0)
    return record["seconds"] + sum(r["seconds"] for r in rows if r.get("part", 0) < last)


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
        seconds = sum(unit_seconds(r) for r in done.values())
        lines.append(
            f"| {claim} | {title} | {len(done)} / {len(keys)} | {span} | {cpu} | {threads} | "
            f"{commits}{dirty} | {_hours(seconds)} |"
        )
    lines += _in_progress(out, model_name)
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
        "| claim | slice | units | verdict | price | measured |",
        "|---|---|---|---|---|---|",
    ]
    for row in stored_verdicts(model_name, model, root=out, size=size).itertuples():
        cells = [row.claim, row.slice, row.units, row.verdict, row.price, row.measured]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _in_progress(out: Path | str, model_name: str) -> list[str]:
    """Lines naming the units stopped inside (a chat's saved session in OUT/<model>/partial/,
    which the next run resumes after its last turn), or none."""
    found = sorted((Path(out) / model_name / "partial").glob("*.session"))
    if not found:
        return []
    lines = ["", "Stopped inside, resumed by the next run after the last turn saved:", ""]
    for path in found:
        extra = peek_session(path)["extra"]
        rows, chat = extra.get("rows", []), extra.get("chat", {})
        where = rows[-1].get("part_cpu", "?") if rows else "?"
        lines.append(
            f"- `{path.name}`: {chat.get('policy', '?')}, {len(rows)} of "
            f"{len(chat.get('turns', []))} turns, last saved on {where} "
            f"({path.stat().st_size / 1e6:.1f} MB)"
        )
    return lines


def write(out: Path | str, model_name: str, model, size: str = "full") -> Path:
    path = Path(out) / model_name / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(describe(out, model_name, model, size))
    return path


MATRIX_BEGIN = "<!-- verdicts: written by every `kvdirect-interp study` merge; do not edit -->"
MATRIX_END = "<!-- end of verdicts -->"


def studied(out: Path | str) -> list[str]:
    """The models with a stored study in OUT (a folder holding model.json): the packaged
    ones in list_models' order, then any others by name."""
    order = {name: i for i, name in enumerate(model_names())}
    found = [p.parent.name for p in Path(out).glob("*/model.json")]
    return sorted(found, key=lambda n: (order.get(n, len(order)), n))


def matrix(out: Path | str, names=None, size: str = "full") -> str:
    """The markdown verdict table of every studied model (`studied`), side by side: one row
    per (claim, slice), one column per model with its verdict, units done of the `size`
    plan and the verdict's price where it pays one, from `stored_verdicts`."""
    names = studied(out) if names is None else list(names)
    cells: dict[tuple[int, str], dict[str, str]] = {}
    unstudied: dict[tuple[int, str], str] = {}
    for name in names:
        for row in stored_verdicts(name, root=out, size=size).itertuples():
            if pd.isna(row.verdict):
                unstudied[(row.claim, name)] = f"{row.measured} ({row.units})"
            else:
                cell = f"{row.verdict} ({row.units})" + (f": {row.price}" if row.price else "")
                cells.setdefault((row.claim, row.slice), {})[name] = cell
    keys = sorted(set(cells) | {(c, "") for c, _ in unstudied if not any(k[0] == c for k in cells)})
    lines = [
        "| claim | slice | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for claim, part in keys:
        row = [cells.get((claim, part), {}).get(n) or unstudied.get((claim, n), "") for n in names]
        lines.append(f"| {claim} | {part} | " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def replace_block(path: Path | str, begin: str, end: str, body: str) -> Path:
    """Put `body` between the markers `begin` and `end` in the file at `path` (appended,
    with its markers, where they are absent); the rest of the file is kept."""
    path = Path(path)
    block = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    path.write_text(text)
    return path


def write_matrix(out: Path | str, size: str = "full") -> Path:
    """Put `matrix` between its markers in OUT/README.md (appended where they are absent)."""
    return replace_block(Path(out) / "README.md", MATRIX_BEGIN, MATRIX_END, matrix(out, size=size))
