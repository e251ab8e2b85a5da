"""The committed full study: `results/<model>/claim<N>.parquet` (written by
`kvdirect-interp study --size full`), read back for the notebooks, and the views of it that
the verdict functions take.

The tables are the repository's data, not the wheel's: they are looked for in
`$KVDIRECT_RESULTS`, else in the `results/` folder next to the package's checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

PROVENANCE = ["date_utc", "cpu", "torch_threads", "git_commit", "package_version"]


def results_dir() -> Path:
    """Where the full study's tables are: $KVDIRECT_RESULTS, else <checkout>/results."""
    env = os.environ.get("KVDIRECT_RESULTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "results"


def load(model: str, claim: int, root: Path | str | None = None) -> pd.DataFrame | None:
    """The merged table of one claim on one model, or None where the study has not written
    it (a notebook then says so instead of showing a verdict)."""
    folder = Path(root) if root is not None else results_dir()
    for suffix, read in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = folder / model / f"claim{claim}{suffix}"
        if path.is_file():
            df = read(path)
            df.attrs["path"] = str(path)
            return df
    return None


def run_of(df: pd.DataFrame) -> str:
    """One line naming the run a stored table comes from: dates, CPU, threads, commit."""
    missing = [c for c in PROVENANCE if c not in df.columns]
    if missing:
        raise ValueError(f"the table lacks provenance columns {missing}; is it a study table?")
    dates = sorted(df.date_utc.str[:10].unique())
    span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    commits = ", ".join(sorted(c[:7] for c in df.git_commit.unique()))
    cpus = "; ".join(sorted(df.cpu.unique()))
    threads = ", ".join(str(t) for t in sorted(df.torch_threads.unique()))
    return f"run {span} on {cpus} ({threads} threads), commit {commits}, {len(df)} rows"


def claim6_tiers(df: pd.DataFrame) -> pd.DataFrame:
    """The claim-6 study table in long form, one row per (batch, evicted_tokens, tier):
    tier "ram" (a copy of the held tensors) and, where measured, "disk" (a file read with
    the page cache dropped first), each with rebuild_s, read_s and rebuild_over_read: the
    table `verdicts.claim6` takes."""
    cols = ["batch", "evicted_tokens", "rebuild_s"]
    ram = df[[*cols, "read_s"]].assign(tier="ram")
    tiers = [ram]
    if "disk_read_s" in df.columns:
        tiers.append(df[[*cols, "disk_read_s"]].rename(columns={"disk_read_s": "read_s"}))
        tiers[-1] = tiers[-1].assign(tier="disk")
    out = pd.concat(tiers, ignore_index=True)
    out["rebuild_over_read"] = out.rebuild_s / out.read_s
    return out
