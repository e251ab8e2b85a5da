"""Every registered policy as the cache of transformers' own generate on the default
packaged model (SmolLM2-135M): a plain HF model sharing the bridge's weights
(fastpath.build_plain) gives this package's greedy tokens under each policy (up to a
near-tie; bitwise, logits too, where the package ran its fast path, the same plain HF
code), and KV-Direct gives DynamicCache's logits bitwise."""

import functools

import pytest
import torch
from transformers import DynamicCache

from kvdirect_interp import generate
from kvdirect_interp.chat import chat_tokens
from kvdirect_interp.fastpath import build_plain, fast_path
from kvdirect_interp.models import DEFAULT_MODEL
from kvdirect_interp.policies import POLICIES, KVDirect
from kvdirect_interp.policies.kvdirect import MODES
from tests.fixtures import packaged_model
from tests.unit.test_hf_generate import agree_up_to_a_near_tie, hf_generate, under

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Write two sentences about the ocean and its tides."}]
N_NEW, BUDGET = 10, 16


@functools.cache
def _models():
    bridge = packaged_model(DEFAULT_MODEL)
    hf = build_plain(bridge)
    hf.generation_config.eos_token_id = None  # as the package's generate: no early stop
    if hf.generation_config.pad_token_id is None:
        hf.generation_config.pad_token_id = bridge.tokenizer.pad_token_id or 0
    prompt = chat_tokens(bridge, PROMPT)  # [1, pos], as generate renders a chat
    return bridge, hf, prompt


@pytest.mark.parametrize("name", list(POLICIES))
def test_hf_generate_gives_the_packages_tokens_on_smollm2(name):
    bridge, hf, prompt = _models()
    policy = POLICIES[name](BUDGET)
    ours = generate(bridge, prompt, max_new_tokens=N_NEW, cache=policy, keep_logits=True)
    tokens, logits = under(policy, hf, prompt, n=N_NEW)
    assert agree_up_to_a_near_tie(ours.new_tokens, ours.logits, tokens, logits) >= 1
    if fast_path(bridge).last.path == "fast":  # the same HF code: the same bits
        assert torch.equal(tokens, ours.new_tokens)
        assert all(torch.equal(a, b) for a, b in zip(ours.logits, logits, strict=True))


@pytest.mark.parametrize("mode", MODES)
def test_kvdirect_gives_dynamic_cache_bits_on_smollm2(mode):
    _, hf, prompt = _models()
    ref_tokens, ref_logits = hf_generate(hf, prompt, DynamicCache(config=hf.config), n=N_NEW)
    tokens, logits = under(KVDirect(BUDGET, checkpoint=mode), hf, prompt, n=N_NEW)
    assert torch.equal(tokens, ref_tokens)
    assert all(torch.equal(a, b) for a, b in zip(ref_logits, logits, strict=True))
