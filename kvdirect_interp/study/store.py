"""The results files: OUT/<model>/claim<N>.jsonl, one JSON line per finished unit.

A line is {"key", "model", "claim", "settings", "provenance", "seconds", "rows"} (rows: the
unit's table as a list of row dicts) and is appended, flushed and fsync'ed when the unit
finishes, so a killed run loses at most the unit it was in. A run killed while writing
leaves a last line without its newline: reading drops it (the file is cut back to the last
whole line, so the next append starts on a line of its own) and that unit runs again. A
broken line anywhere else is an error: it was not left by a kill. Shards of one claim
append to the same file; a lock file beside it serialises the appends and the repair.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock


def claim_path(out: Path, model: str, claim: int) -> Path:
    return Path(out) / model / f"claim{claim}.jsonl"


class ClaimStore:
    """The finished units of one (model, claim) under `out`."""

    def __init__(self, out: Path, model: str, claim: int) -> None:
        self.path = claim_path(out, model, claim)
        # Shards on several nodes share this lock (study/cluster.py). FileLock is flock(2):
        # the kernel drops it when its holder dies (SLURM kills shards at their time limit),
        # and on NFS Linux takes it at the server, so nodes see each other's; where the
        # filesystem has no flock (Lustre mounted noflock) filelock 4 falls back to its
        # soft lock (3.x raises). A SoftFileLock everywhere would outlive a shard killed
        # while holding it on another node (only same-host markers are found stale),
        # stopping every shard; docs/cluster.md names the mounts whose flock is per node.
        self.lock = FileLock(str(self.path) + ".lock")

    def _repair(self) -> None:
        """Cut a partial last line (no newline: a write cut short by a kill)."""
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def records(self) -> list[dict]:
        """Every finished unit's record, in file order (a key finished twice: both)."""
        if not self.path.exists():
            return []
        with self.lock:
            self._repair()
            lines = self.path.read_text(encoding="utf-8").splitlines()
        out = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as err:
                raise ValueError(
                    f"{self.path}, line {i}: not a JSON record ({err}); only a last line cut "
                    "short by a killed run is dropped: remove or fix this line by hand"
                ) from None
        return out

    def finished(self) -> set[str]:
        """Keys of the units already measured."""
        return {r["key"] for r in self.records()}

    def append(self, record: dict) -> None:
        """Append one finished unit's record as one line, durably (fsync)."""
        line = json.dumps(record, allow_nan=True, default=_plain) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = line.encode("utf-8")
        with self.lock:
            if self.path.exists():
                self._repair()
            # one write(2) of the whole line on an O_APPEND descriptor (a buffered file
            # writes a long line in 8 KiB pieces): where appends are atomic (local disks,
            # Lustre, GPFS), no other writer's line lands inside it even past the lock
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                view = memoryview(data)
                while view:  # a regular file takes it in one call; a short write continues
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)


def _plain(x):
    """NumPy scalars and pandas' missing values as plain JSON values."""
    if isinstance(x, np.generic):
        return x.item()
    if x is pd.NA or x is pd.NaT:
        return None
    raise TypeError(f"cannot store {type(x).__name__} in a results line: {x!r}")


def _scalar(x):
    """A JSON-ready value: NumPy scalars as Python numbers, missing values (NaN, NA) as None."""
    if isinstance(x, (list, tuple)):
        return [_scalar(y) for y in x]
    if x is None or x is pd.NA or x is pd.NaT:
        return None
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def records(df: pd.DataFrame) -> list[dict]:
    """A DataFrame as JSON-ready row dicts."""
    return [{k: _scalar(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
