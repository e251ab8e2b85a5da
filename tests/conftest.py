"""Shared fixtures. Every test runs with outbound network connections refused (loopback
stays open for the notebook and browser tests): nothing may reach a model hub. Helpers
that tests import live in tests/fixtures.py."""

from __future__ import annotations

import socket

import pytest

from kvdirect_interp.models import DEFAULT_MODEL
from tests.fixtures import TINY, packaged_model, random_tokens, tiny_model  # noqa: F401

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (
        host.startswith("127.") or host in ("localhost", "::1") or self.family == socket.AF_UNIX
    ):
        return _real_connect(self, address)
    raise OSError(f"network blocked in tests: connect to {address!r}")


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


@pytest.fixture(params=TINY)
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def smollm2():
    return packaged_model(DEFAULT_MODEL)
