"""Shared fixtures. Every test runs with outbound network connections refused (loopback
stays open for the notebook and browser tests): nothing may reach a model hub."""

from __future__ import annotations

import functools
import os
import socket

import pytest
import torch

from kvdirect_interp import load_model
from kvdirect_interp.models import DEFAULT_MODEL

TINY = ["tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-gpt2", "tiny-neox", "tiny-mistral"]
_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")
                                  or self.family == socket.AF_UNIX):
        return _real_connect(self, address)
    raise OSError(f"network blocked in tests: connect to {address!r}")


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


@functools.cache
def tiny_model(name: str):
    return load_model(name)


@pytest.fixture(params=TINY)
def tiny(request):
    return tiny_model(request.param)


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


@pytest.fixture(scope="session")
def smollm2():
    return packaged_model(DEFAULT_MODEL)
