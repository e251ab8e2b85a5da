"""models.convert_apart: a packaged GGUF's first conversion runs in a child process, so the
loading process's RSS (claim 4 records it per turn) does not carry the conversion's heap."""

from __future__ import annotations

import subprocess
import sys

import torch

from kvdirect_interp import _converted, models
from kvdirect_interp.study import run


def _record_runs(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(models.subprocess, "run", lambda args, check: calls.append(args))
    return calls


def test_a_packaged_model_without_an_entry_is_converted_in_a_child(monkeypatch):
    calls = _record_runs(monkeypatch)
    monkeypatch.setattr(_converted, "problem", lambda key: "no entry")
    assert models.convert_apart("qwen2.5-0.5b", torch.bfloat16) is True
    assert calls == [[sys.executable, "-c", models._CONVERT, "qwen2.5-0.5b", "bfloat16"]]


def test_nothing_runs_where_the_entry_is_usable_or_there_is_nothing_to_convert(monkeypatch):
    calls = _record_runs(monkeypatch)
    monkeypatch.setattr(_converted, "problem", lambda key: None)
    assert models.convert_apart("smollm2-135m") is False
    monkeypatch.setattr(_converted, "problem", lambda key: "no entry")
    assert models.convert_apart("tiny-llama") is False
    assert calls == []


def test_the_childs_program_loads_a_model(tmp_path):
    # the snippet itself, run as the child would run it (a tiny model: nothing to convert)
    done = subprocess.run(
        [sys.executable, "-c", models._CONVERT, "tiny-llama", "float32"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_study_loader_converts_apart_before_loading(monkeypatch):
    seen = []
    monkeypatch.setattr(models, "convert_apart", lambda name, dtype: seen.append(("c", name)))
    monkeypatch.setattr(models, "load_model", lambda name, dtype: seen.append(("l", name)))
    run.loader("tiny-llama")("float32")
    assert seen == [("c", "tiny-llama"), ("l", "tiny-llama")]
