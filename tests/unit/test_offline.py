"""The loader and a forward pass work with the network blocked at the socket level."""

import subprocess
import sys
import textwrap

import pytest

BLOCKED_RUN = textwrap.dedent("""
    import socket
    def refuse(*args, **kwargs):
        raise OSError("network blocked")
    socket.socket.connect = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    import torch
    from kvdirect_interp import load_model
    model = load_model({name!r})
    with torch.no_grad():
        logits = model(model.to_tokens("offline check"))
    assert torch.isfinite(logits).all()
    print("OK", tuple(logits.shape))
""")


def run_blocked(name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN.format(name=name)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_tiny_model_loads_and_runs_with_network_blocked(name):
    result = run_blocked(name)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")
