"""Run the study's units (skipping finished ones, one shard of them) and merge what is
finished into one table per claim.

Sharding: shard "i/n" takes every n-th unit of each claim's plan, starting at unit i,
0-based (i in 0..n-1): shards 0/n ... (n-1)/n together are the whole plan, disjoint. Each
shard appends to the same claim<N>.jsonl (store.py locks the appends), so shards may run
at once in one OUT folder, or apart and their files be concatenated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .. import models
from ..results import results_dir
from . import facts as model_facts
from . import figure, paper, report
from .measure import DTYPES, MEASURE, Context
from .plan import CLAIMS, plan
from .provenance import provenance
from .store import ClaimStore
from .units import Unit


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "i/n" -> (i, n), 0-based: 0 <= i < n. None -> (0, 1), every unit."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must be 'i/n' with integers, 0 <= i < n; got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard must be 'i/n' with 0 <= i < n (0-based); got {text!r}")
    return i, n


def shard_of(units: Sequence[Unit], shard: tuple[int, int]) -> list[Unit]:
    i, n = shard
    return list(units[i::n])


@dataclass
class Outcome:
    """What a run did: keys measured now and keys found finished, and seconds per claim
    (wall time of the claim's units run now, model loads included)."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)


def loader(model_name: str) -> Callable[[str], object]:
    """dtype name -> `load_model(model_name, dtype=...)`, converting a packaged GGUF first
    in a child process where it has no converted entry yet (`models.convert_apart`), so
    the RSS that claim 4 records does not depend on which process converted it."""

    def load(dtype: str):
        models.convert_apart(model_name, DTYPES[dtype])
        return models.load_model(model_name, dtype=DTYPES[dtype])

    return load


def _claims(claims: Sequence[int] | None) -> list[int]:
    claims = list(CLAIMS if claims is None else claims)
    bad = [c for c in claims if c not in CLAIMS]
    if bad:
        raise ValueError(f"unknown claims {bad}; accepted: {list(CLAIMS)}")
    return claims


def run_study(
    model_name: str,
    size: str,
    *,
    claims: Sequence[int] | None = None,
    shard: tuple[int, int] = (0, 1),
    out: Path | str = "results",
    load: Callable[[str], object] | None = None,
    progress: bool = True,
) -> Outcome:
    """Measure every unfinished unit of this shard of each claim's plan; each finished
    unit is appended to OUT/<model>/claim<N>.jsonl at once (with its provenance), so a
    killed run resumes where it stopped; a claim-4 chat also resumes after its last turn
    (its state is saved per turn in OUT/<model>/partial/ until the unit is written).
    `load`: dtype name -> model (default: load_model)."""
    out = Path(out)
    ctx = Context(
        load or loader(model_name),
        scratch=out / model_name / ".scratch",
        partial=out / model_name / "partial",
        progress=progress,
    )
    done = Outcome()
    claims = _claims(claims)
    # what the plans and verdicts need of the model, kept next to its tables (facts.py)
    facts = model_facts.ModelFacts.of(ctx.model(), model_name)
    model_facts.write(out, facts)
    for claim in claims:
        start = time.perf_counter()
        ctx.release()  # one model in memory at each claim's start (claim 4 measures RSS)
        store = ClaimStore(out, model_name, claim)
        units = shard_of(plan(model_name, facts, claim, size), shard)
        finished = store.finished()
        todo = [u for u in units if u.key not in finished]
        done.skipped += [u.key for u in units if u.key in finished]
        bar = tqdm(
            total=len(units),
            initial=len(units) - len(todo),
            desc=f"claim {claim}",
            # only an explicit False silences the bar: TQDM_DISABLE=1 still works otherwise
            **({} if progress else {"disable": True}),
        )
        for unit in todo:
            bar.set_postfix_str(unit.label()[:60])
            t0 = time.perf_counter()
            try:
                rows = MEASURE[claim](unit, ctx)
            except Exception as err:
                err.add_note(f"in study unit {unit.key} ({unit.label()})")
                raise
            model = ctx.model(unit.settings.get("dtype", "float32"))
            store.append(
                {
                    "key": unit.key,
                    "model": model_name,
                    "claim": claim,
                    "size": size,
                    "settings": unit.settings,
                    "provenance": provenance(model),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "rows": rows,
                }
            )
            snapshot = ctx.snapshot(unit)
            if snapshot is not None:  # the record holds it all now
                snapshot.unlink(missing_ok=True)
            done.ran.append(unit.key)
            bar.update()
        bar.close()
        done.seconds[claim] = time.perf_counter() - start
    return done


def table(model_name: str, claim: int, units: Sequence[Unit], out: Path | str) -> pd.DataFrame:
    """One claim's finished rows of `units`, in plan order: each row with its unit's key,
    settings (JSON text), seconds and provenance columns. Units not finished are absent
    (df.attrs["missing"] counts them); a unit finished twice gives its last record."""
    last = {r["key"]: r for r in ClaimStore(Path(out), model_name, claim).records()}
    rows = []
    for unit in units:
        r = last.get(unit.key)
        if r is None:
            continue
        head = {"unit_key": r["key"], "model": r["model"], "claim": claim}
        tail = {
            "unit_settings": json.dumps(r["settings"], sort_keys=True),
            "unit_seconds": r["seconds"],
            **r["provenance"],
        }
        rows += [{**head, **row, **tail} for row in r["rows"]]
    df = pd.DataFrame(rows)
    df.attrs["missing"] = sum(u.key not in last for u in units)
    return df


def merge(
    model_name: str,
    size: str,
    *,
    claims: Sequence[int] | None = None,
    out: Path | str = "results",
    model=None,
) -> dict[int, Path]:
    """Write each claim's table of the `size` plan as OUT/<model>/claim<N>.parquet (CSV
    where pyarrow is not installed), OUT/<model>/README.md and OUT/README.md's verdict
    table. `model`: the loaded model or its ModelFacts (the plans of claims 2 and 5 ask
    them); when not given, the facts a run stored (OUT/<model>/model.json) are used, else
    the model is loaded. Returns claim -> path written."""
    try:
        import pyarrow  # noqa: F401

        ext = "parquet"
    except ImportError:
        ext = "csv"
    if model is None:
        model = model_facts.read(out, model_name) or loader(model_name)("float32")
    facts = model_facts.facts_of(model, model_name)
    model_facts.write(out, facts)
    written = {}
    for claim in _claims(claims):
        df = table(model_name, claim, plan(model_name, facts, claim, size), out)
        path = Path(out) / model_name / f"claim{claim}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext == "parquet":
            df.to_parquet(path, index=False)
        else:
            df.to_csv(path, index=False)
        written[claim] = path
    report.write(out, model_name, facts, size)  # OUT/<model>/README.md: the run, per claim
    report.write_matrix(out, size)  # OUT/README.md: every studied model's verdicts
    readme = Path(out).resolve().parent / "README.md"
    if size == "full" and Path(out).resolve() == results_dir().resolve() and readme.is_file():
        paper.write(readme, out, size)  # the checkout's README: the paper beside ours
        try:
            figure.draw(out, readme.parent / figure.FIGURE)
        except ImportError:
            print(
                "the summary figure was not redrawn: it needs matplotlib (pip install .[figures])"
            )
    return written
