"""Test helpers shared by the suites: tiny models (built once per process), seeded random
tokens, packaged real models (skipped where not installed, except the default under CI).
Fixtures that use them live in conftest.py."""

from __future__ import annotations

import functools
import os

import pytest
import torch

from kvdirect_interp import load_model
from kvdirect_interp.models import DEFAULT_MODEL

TINY = ["tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-gpt2", "tiny-neox", "tiny-mistral"]


@functools.cache
def tiny_model(name: str):
    return load_model(name)


def random_tokens(n_batch: int, n_pos: int, seed: int) -> torch.Tensor:
    """Byte tokens (ids 3..258) from a private generator."""
    return torch.randint(3, 259, (n_batch, n_pos), generator=torch.Generator().manual_seed(seed))


@functools.cache
def _packaged(name: str):
    return load_model(name)


def packaged_model(name: str):
    """A packaged real model, or a skip when its weights package is not installed. CI
    installs the default model only: a missing default is a failure there."""
    try:
        return _packaged(name)
    except ImportError as err:
        if os.environ.get("CI") and name == DEFAULT_MODEL:
            raise
        pytest.skip(str(err))
