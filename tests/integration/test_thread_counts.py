"""The study may run as shards of one torch thread each (two shards on two cores do more
units an hour than one process with two threads), and the notebooks recheck stored rows
in a process with the machine's default threads. That is only sound where the thread
count does not change the bits: check it on each installed packaged model, for a forward
pass at two GEMM shapes and for generation under a cache, a KV-Direct mode and a
baseline."""

import pytest
import torch

import kvdirect_interp as kd
from kvdirect_interp._weights import PACKAGED
from kvdirect_interp.hooks import forward
from kvdirect_interp.policies import registry
from tests.fixtures import packaged_model

pytestmark = pytest.mark.integration

# registered names, built by the registry's factories as the study builds them
POLICIES = ["FullKV", "KVDirect[every_layer]", "H2O"]


def _outputs(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward logits at 300 rows and at 1 row, and every step's logits of 8 greedy tokens
    after 200 prompt tokens under each policy at budget (window) 32."""
    out = {"forward_300": forward(model, tokens), "forward_1": forward(model, tokens[:, :1])}
    for name in POLICIES:
        cache = registry.make(name, 32)
        g = kd.generate(model, tokens[:, :200], max_new_tokens=8, cache=cache, keep_logits=True)
        out[name] = torch.stack(list(g.logits))
    return out


@pytest.mark.parametrize("name", list(PACKAGED))
def test_one_and_two_threads_give_the_same_bits(name):
    model = packaged_model(name)
    tokens = torch.randint(100, 20_000, (1, 300), generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = _outputs(model, tokens)
            torch.set_num_threads(2)
            two = _outputs(model, tokens)
    finally:
        torch.set_num_threads(before)
    differ = {
        k: float((one[k] - two[k]).abs().max()) for k in one if not torch.equal(one[k], two[k])
    }
    assert not differ, f"1 and 2 torch threads differ on {name} (max |diff|): {differ}"
