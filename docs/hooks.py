"""mkdocs hooks: the pages that show stored results render them at build time from the
committed files (`results/`, `benchmarks/results/*.json`), so each number lives in one place
and the site cannot go stale. A page asks for a table with a marker line:

    <!-- render: paper -->            the paper beside ours, every model, with our figures
    <!-- render: matrix -->           every studied model's verdicts per claim and slice
    <!-- render: bench TABLE -->      a table of benchmarks/results/latest.json, with its run
    <!-- render: patching -->         benchmarks/results/patching.json, with its run

An unknown marker, table or missing file fails the build (mkdocs build --strict)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kvdirect_interp.results import results_dir
from kvdirect_interp.study import paper, report

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "results"
MARK = re.compile(r"^<!-- render: (\w+)(?: (\S+))? -->$", re.MULTILINE)


def _number(x) -> str:
    """A cell for reading: ints with thousands separators, floats to 3 significant digits."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x).replace("|", "\\|")
    if isinstance(x, int) or float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:,.3g}" if abs(x) >= 1 else f"{x:.3g}"


def _markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_number(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _run_line(run: dict) -> str:
    """Where and when a stored benchmark table was measured, from its own `run` record."""
    machine = run.get("machine", {})
    what = [
        run.get("date_utc") or run.get("date", ""),
        machine.get("cpu", ""),
        f"{machine.get('threads', '?')} threads",
        f"torch {machine.get('torch', '?')}",
        f"model {run['model']}" if "model" in run else "",
        f"commit {run['commit'][:7]}" if run.get("commit") else "",
    ]
    return "*Run: " + ", ".join(w for w in what if w) + ".*"


def _stored(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the docs render their tables from it")
    return json.loads(path.read_text())


def render(kind: str, arg: str | None) -> str:
    if kind == "paper":
        return paper.table(results_dir())
    if kind == "matrix":
        return report.matrix(results_dir())
    if kind == "bench":
        tables = _stored(BENCH / "latest.json")["tables"]
        if arg not in tables:
            raise KeyError(f"no benchmark table {arg!r}; stored: {sorted(tables)}")
        return _markdown(tables[arg]["rows"]) + "\n\n" + _run_line(tables[arg]["run"])
    if kind == "patching":
        stored = _stored(BENCH / "patching.json")
        return _markdown(stored["rows"]) + "\n\n" + _run_line(stored["run"])
    raise ValueError(f"unknown render marker {kind!r}; accepted: paper, matrix, bench, patching")


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs API)
    return MARK.sub(lambda m: render(m.group(1), m.group(2)), markdown)
