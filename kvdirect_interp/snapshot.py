"""A chat Session saved to a file and restored, so a long chat resumes where it stopped.

A replay mode's 20-turn chat is hours of CPU on a 0.5B model: longer than one sitting.
`save_session` writes everything the session holds between turns (its messages, tokens,
last logits, draw generator and the policy runner's whole state: held K/V, checkpoints,
scores, positions) with pickle; the model is not written, only named, and `load_session`
hands the restored state the model it is given. What the runner computed is restored bit
for bit, so the turns after a resume are the turns an unbroken session would have said
(tests/unit/test_snapshot.py checks every registered policy) on the same machine; on
another CPU the later turns are that CPU's arithmetic, which is why run_chat records which
call (and where) measured each turn.

The file is a pickle: load only files you wrote (the study keeps them under its results).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from .generation import Session

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FORMAT = 1  # bump when what a snapshot holds changes: older files are refused


def _model_objects(model: TransformerBridge) -> dict[int, tuple[str, str]]:
    """id -> (kind, name) for every object of the model a runner may refer to: the model,
    its modules, parameters and buffers, its configs and tokenizer. These are written as
    names, never as values (a snapshot holds state, not weights)."""
    named: dict[int, tuple[str, str]] = {id(model): ("model", "")}
    for name, module in model.named_modules():
        named.setdefault(id(module), ("module", name))
    for name, param in model.named_parameters(remove_duplicate=False):
        named.setdefault(id(param), ("parameter", name))
    for name, buf in model.named_buffers(remove_duplicate=False):
        named.setdefault(id(buf), ("buffer", name))
    for attr in ("cfg", "tokenizer"):
        if getattr(model, attr, None) is not None:
            named.setdefault(id(getattr(model, attr)), ("attr", attr))
    original = getattr(model, "original_model", None)
    if original is not None and getattr(original, "config", None) is not None:
        named.setdefault(id(original.config), ("config", ""))
    return named


def _resolve(model: TransformerBridge, kind: str, name: str):
    if kind == "model":
        return model
    if kind == "module":
        return model.get_submodule(name)
    if kind == "parameter":
        return model.get_parameter(name)
    if kind == "buffer":
        return model.get_buffer(name)
    if kind == "attr":
        return getattr(model, name)
    if kind == "config":
        return model.original_model.config
    raise ValueError(f"unknown model reference {kind!r} in a snapshot")


class _Pickler(pickle.Pickler):
    def __init__(self, file, model) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._named = _model_objects(model)

    def persistent_id(self, obj):
        return self._named.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, model) -> None:
        super().__init__(file)
        self._model = model

    def persistent_load(self, ref):
        return _resolve(self._model, *ref)


def save_session(session: Session, path: Path | str, extra: dict | None = None) -> Path:
    """Write `session`'s state (and `extra`, any picklable dict: what the caller needs to
    resume) to `path`, atomically: a run killed while writing leaves the last snapshot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in vars(session).items() if k != "model"}
    # two pickles: a header readable without the model (peek_session), then the state
    header = {"format": FORMAT, "model": session.model.cfg.model_name, "extra": extra or {}}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
        _Pickler(f, session.model).dump(state)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _read_header(f, path: Path) -> dict:
    header = pickle.load(f)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a session snapshot of format {FORMAT} (written by another "
            "version of kvdirect_interp?): delete it to start the chat over"
        )
    return header


def peek_session(path: Path | str) -> dict:
    """The header of the snapshot at `path`, without a model: {"format", "model", "extra"}."""
    path = Path(path)
    with open(path, "rb") as f:
        return _read_header(f, path)


def load_session(path: Path | str, model: TransformerBridge) -> tuple[Session, dict]:
    """The Session saved at `path`, restored onto `model` (the one it was saved from, or a
    load of the same weights), and the `extra` dict saved with it."""
    path = Path(path)
    with open(path, "rb") as f:
        header = _read_header(f, path)
        if header["model"] != model.cfg.model_name:
            raise ValueError(
                f"{path} holds a chat of model {header['model']!r}, not of "
                f"{model.cfg.model_name!r}: load it with that model, or delete it"
            )
        state = _Unpickler(f, model).load()
    session = Session.__new__(Session)
    vars(session).update(state, model=model)
    return session, header["extra"]
