"""What a unit of the study is: one small, independent measurement (a model, a claim, a
settings dict), and the key that names it in the results files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata


@cache
def package_version() -> str:
    """kvdirect_interp.__version__ where the package defines it, else the installed
    distribution's version, else "unknown" (a checkout run without installing)."""
    import kvdirect_interp

    found = getattr(kvdirect_interp, "__version__", None)
    if found:
        return str(found)
    try:
        return metadata.version("kvdirect_interp")
    except metadata.PackageNotFoundError:
        return "unknown"


def settings_hash(settings: dict, version: str) -> str:
    """12 hex digits of sha256 over the settings and the package version (canonical JSON:
    sorted keys, so dict order never changes a key)."""
    text = json.dumps({"settings": settings, "version": version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Unit:
    """One measurement: `claim` (1-6) on `model` with `settings` (JSON-ready scalars and
    lists; which keys a claim takes is plan.py's). Small enough that a killed run loses
    little: one (prompt, budget, policy), one (task pair, site), one chat, ..."""

    model: str
    claim: int
    settings: dict = field(hash=False)

    @property
    def key(self) -> str:
        """ "<model>/claim<N>/<hash>": a new package version or any changed setting gives a
        new key, so results of another version are never taken for this one's."""
        return f"{self.model}/claim{self.claim}/{settings_hash(self.settings, package_version())}"

    def label(self) -> str:
        """The settings in a short human form (progress bars, error messages)."""
        return " ".join(f"{k}={v}" for k, v in self.settings.items())
