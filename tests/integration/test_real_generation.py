"""Generation under every KVDirect mode on the packaged real models: the default model
(SmolLM2-135M, installed by the set-up) always, the others when their weights package is
installed (see the README's model table)."""

import functools

import pytest
import torch

from kvdirect_interp import FullKV, KVDirect, Session, generate
from kvdirect_interp._weights import PACKAGED
from tests.fixtures import packaged_model

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Write two sentences about the ocean."}]
MODES = ["every_layer", "min_bytes", "first_layer", "token_ids"]
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "seed": 3}


@functools.cache
def references(name: str):
    """FullKV's greedy run (with logits) and seeded-sampling run on `name`."""
    model = packaged_model(name)
    greedy = generate(model, PROMPT, max_new_tokens=20, keep_logits=True)
    sampled = generate(model, PROMPT, max_new_tokens=20, **SAMPLING)
    return greedy, sampled


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(PACKAGED))
def test_kvdirect_mode_equals_fullkv_tokens(name, mode):
    model = packaged_model(name)
    greedy, sampled = references(name)
    # window 8 < the 20-odd prompt tokens: evicted tokens' K/V are rebuilt from the first step
    got = generate(
        model, PROMPT, max_new_tokens=20, keep_logits=True, cache=KVDirect(8, checkpoint=mode)
    )
    assert torch.equal(got.tokens, greedy.tokens)
    # measured: the exact-shape rebuild makes every step's logits the same bits
    assert all(torch.equal(a, b) for a, b in zip(greedy.logits, got.logits, strict=True))
    got = generate(model, PROMPT, max_new_tokens=20, cache=KVDirect(8, checkpoint=mode), **SAMPLING)
    assert torch.equal(got.tokens, sampled.tokens)


def test_two_turn_chat_kvdirect_matches_fullkv(smollm2):
    sessions = [Session(smollm2, FullKV()), Session(smollm2, KVDirect(16))]
    for text in ["What is the capital of France?", "And of Italy?"]:
        a, b = (s.say(text, max_new_tokens=12) for s in sessions)
        assert torch.equal(a.new_tokens, b.new_tokens)
    assert sessions[0].tokens == sessions[1].tokens


@pytest.mark.parametrize("mode", ["first_layer", "token_ids"])
def test_streaming_replay_gives_fullkv_bits_with_one_layer_of_kv(smollm2, mode):
    """The streaming replay (the default) and the one-shot replay give FullKV's bits on the
    real model; the streaming one holds about one layer's K/V and the evicted tokens' hidden
    state at a time, the one-shot one every layer's K/V."""
    prompt = "The ocean covers most of the planet, and"  # a short text: a few tokens
    kw = dict(max_new_tokens=6, keep_logits=True)
    ref = generate(smollm2, prompt, **kw)
    peak = {}
    for replay in ("streaming", "one_shot"):
        got = generate(smollm2, prompt, cache=KVDirect(4, checkpoint=mode, replay=replay), **kw)
        assert torch.equal(got.tokens, ref.tokens)
        assert all(torch.equal(a, b) for a, b in zip(ref.logits, got.logits, strict=True))
        peak[replay] = max(r["rebuilt_bytes"] for r in got.memory)
    cfg = smollm2.cfg
    per_token_kv = 2 * cfg.n_key_value_heads * cfg.d_head * 4  # one layer, float32
    n_rows = ref.tokens.shape[1]  # an upper bound on the tokens replayed in one pass
    assert 0 < peak["streaming"] <= n_rows * (2 * cfg.d_model * 4 + per_token_kv)
    assert peak["streaming"] * 4 < peak["one_shot"]
