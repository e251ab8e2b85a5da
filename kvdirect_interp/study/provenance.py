"""Where a row was measured: put on every row of the study, so a number names its run."""

from __future__ import annotations

import platform
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import torch

from .units import package_version

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@cache
def git_state() -> tuple[str, bool | None]:
    """(commit, dirty) of the checkout the package is imported from; ("unknown", None)
    outside one. A wheel installed into a venv that lies inside some checkout must not
    report that checkout's commit, so the top level must hold this very package folder."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / "kvdirect_interp" != PACKAGE_DIR:
        return "unknown", None
    commit = _git("rev-parse", "HEAD") or "unknown"
    # git runs in the package folder (-C): "." is the package, as the checkout holds it
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return commit, None if status is None else bool(status)


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def provenance(model) -> dict:
    """Provenance columns for rows measured now on `model` (its parameters' dtype)."""
    commit, dirty = git_state()
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "torch_version": torch.__version__,
        "transformers_version": _version("transformers"),
        "transformer_lens_version": _version("transformer-lens"),
        "package_version": package_version(),
        "git_commit": commit,
        "git_dirty": dirty,  # package files differ from that commit (None: not known)
    }
