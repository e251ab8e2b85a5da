"""Generation under every KVDirect mode on the default packaged model (SmolLM2-135M)."""

import pytest
import torch

from kvdirect_interp import FullKV, KVDirect, Session, generate

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Write two sentences about the ocean."}]
MODES = ["every_layer", "min_bytes", "first_layer", "token_ids"]


@pytest.fixture(scope="module")
def references(smollm2):
    greedy = generate(smollm2, PROMPT, max_new_tokens=20, keep_logits=True)
    sampled = generate(smollm2, PROMPT, max_new_tokens=20, do_sample=True, temperature=0.8,
                       top_p=0.95, seed=3)
    return greedy, sampled


@pytest.mark.parametrize("mode", MODES)
def test_kvdirect_mode_equals_fullkv_tokens(smollm2, references, mode):
    greedy, sampled = references
    got = generate(smollm2, PROMPT, max_new_tokens=20, keep_logits=True,
                   cache=KVDirect(8, checkpoint=mode))
    assert torch.equal(got.tokens, greedy.tokens)
    # measured here: the exact-shape rebuild makes every step's logits the same bits
    assert all(torch.equal(a, b) for a, b in zip(greedy.logits, got.logits, strict=True))
    got = generate(smollm2, PROMPT, max_new_tokens=20, do_sample=True, temperature=0.8,
                   top_p=0.95, seed=3, cache=KVDirect(8, checkpoint=mode))
    assert torch.equal(got.tokens, sampled.tokens)


def test_two_turn_chat_kvdirect_matches_fullkv(smollm2):
    sessions = [Session(smollm2, FullKV()), Session(smollm2, KVDirect(16))]
    for text in ["What is the capital of France?", "And of Italy?"]:
        a, b = (s.say(text, max_new_tokens=12) for s in sessions)
        assert torch.equal(a.new_tokens, b.new_tokens)
    assert sessions[0].tokens == sessions[1].tokens
