"""The data files that ship inside the package (kvdirect_interp/data/*.json: prompt sets,
tasks, the 20-turn chat; our own text), read with importlib.resources so that they are
found in an installed wheel as in a checkout (where data/ is a symlink to them)."""

from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable


def _folder() -> Traversable:
    return files("kvdirect_interp") / "data"


def data_files() -> list[str]:
    """The names `load_data` accepts, sorted."""
    return sorted(p.name for p in _folder().iterdir() if p.is_file() and p.name.endswith(".json"))


def load_data(name: str) -> dict:
    """A packaged JSON data file, parsed; `name` is a file name such as "prompts.json"."""
    names = data_files()
    if not isinstance(name, str) or name not in names:
        raise FileNotFoundError(
            f"no packaged data file {name!r}; accepted names: {', '.join(names)}"
        )
    text = (_folder() / name).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"packaged data file {name!r} is not valid JSON: {err}") from None
