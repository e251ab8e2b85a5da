"""Every registered policy as the cache of transformers' own generate on a plain HF model
(`policy.attach(hf_model)`, policies/hf_cache.py). Checked here, on every tiny family:
greedy tokens equal this package's generate under the same policy (up to a near-tie,
reported as the other tests do; bitwise, logits too, where the package ran the plain HF
tree, its fast path); KV-Direct's logits equal DynamicCache's bitwise, in one
generate call and across calls that continue a chat; bf16 models under every policy; the
hooks always removed; left-padded batches row by row (FullKV, NoCache); and the refusals
(batches and padding under the other policies, non-eager
attention for scoring policies, layers that are not attention, a bridge)."""

import functools
from contextlib import nullcontext

import pytest
import torch
from transformers import DynamicCache

from kvdirect_interp import generate
from kvdirect_interp._tiny import build_tiny_hf
from kvdirect_interp.fastpath import fast_path
from kvdirect_interp.policies import (
    H2O,
    POLICIES,
    TOVA,
    FullKV,
    KVDirect,
    NoCache,
    SnapKV,
    WindowOnly,
)
from kvdirect_interp.policies.kvdirect import MODES
from tests.fixtures import TINY, random_tokens, tiny_model

N_PROMPT, N_NEW, BUDGET = 20, 12, 6
LOGIT_TOL = 1e-4  # tiny random models: near-ties are common (see test_generation)
PAD = 2  # the byte tokenizer's <pad>


@functools.cache
def _hf(name: str, dtype: torch.dtype = torch.float32):
    """The tiny family's plain HF model: the weights load_model(name) boots (seed 0), never
    stopping at <eos> (the package's generate does not either)."""
    hf, _ = build_tiny_hf(name, dtype=dtype)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = PAD
    return hf


def hf_generate(hf, prompt, cache, n=N_NEW, **kw):
    """(new tokens [batch, n], raw logits per step [batch, d_vocab]) of hf.generate; no
    padding unless an attention_mask says so (generate would read <pad> ids as padding)."""
    kw.setdefault("attention_mask", torch.ones_like(prompt))
    out = hf.generate(
        prompt,
        past_key_values=cache,
        max_new_tokens=n,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **kw,
    )
    return out.sequences[:, prompt.shape[1] :], list(out.logits)


def under(policy, hf, prompt, n=N_NEW, **kw):
    with policy.attach(hf) as cache:
        return hf_generate(hf, prompt, cache, n, **kw)


def agree_up_to_a_near_tie(ref_tokens, ref_logits, tokens, logits) -> int:
    """Logits within LOGIT_TOL and tokens equal at every step up to the first where the
    reference's top-2 margin is within twice that; returns how many steps were compared."""
    for step, (a, b) in enumerate(zip(ref_logits, logits, strict=True)):
        torch.testing.assert_close(b, a, rtol=0, atol=LOGIT_TOL)
        top2 = a.topk(2).values[0]
        if float(top2[0] - top2[1]) <= 2 * LOGIT_TOL:
            return step  # past a near-tie the two continuations may part ways legitimately
        assert int(ref_tokens[0, step]) == int(tokens[0, step]), step
    return len(ref_logits)


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("family", TINY)
def test_hf_generate_gives_the_packages_tokens(family, name):
    policy = POLICIES[name](BUDGET)
    prompt = random_tokens(1, N_PROMPT, seed=31)
    ours = generate(
        tiny_model(family), prompt, max_new_tokens=N_NEW, cache=policy, keep_logits=True
    )
    tokens, logits = under(policy, _hf(family), prompt)
    assert tokens.shape == (1, N_NEW)
    assert agree_up_to_a_near_tie(ours.new_tokens, ours.logits, tokens, logits) >= 1
    if fast_path(tiny_model(family)).last.path == "fast":  # the same HF code: the same bits
        assert torch.equal(tokens, ours.new_tokens)
        assert all(torch.equal(a, b) for a, b in zip(ours.logits, logits, strict=True))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", TINY)
def test_kvdirect_gives_dynamic_cache_bits(family, mode):
    hf = _hf(family)
    prompt = random_tokens(1, N_PROMPT, seed=32)
    ref_tokens, ref_logits = hf_generate(hf, prompt, DynamicCache(config=hf.config))
    tokens, logits = under(KVDirect(4, checkpoint=mode), hf, prompt)
    assert torch.equal(tokens, ref_tokens)
    assert all(torch.equal(a, b) for a, b in zip(ref_logits, logits, strict=True))


@pytest.mark.parametrize("policy", [KVDirect(4, checkpoint=m) for m in MODES], ids=str)
@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_a_chat_continued_across_generate_calls_keeps_dynamic_cache_bits(family, policy):
    """Each call continues from the cache (the full sequence in, only the new tokens fed):
    multi-token turns after one-token steps, each rebuilt with its own pass's shape (Gemma
    3: past its sliding window of 8)."""
    hf = _hf(family)
    turns = [random_tokens(1, n, seed=33 + n) for n in (12, 7, 9)]
    runs = []
    for reference in (True, False):
        context = nullcontext(DynamicCache(config=hf.config)) if reference else policy.attach(hf)
        with context as cache:
            seq, got = torch.zeros(1, 0, dtype=torch.long), []
            for turn in turns:
                seq = torch.cat([seq, turn], 1)
                new, logits = hf_generate(hf, seq, cache, n=5)
                seq = torch.cat([seq, new], 1)
                got.append((new, logits))
        runs.append(got)
    for (a_new, a_logits), (b_new, b_logits) in zip(*runs, strict=True):
        assert torch.equal(a_new, b_new)
        assert all(torch.equal(a, b) for a, b in zip(a_logits, b_logits, strict=True))


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_every_policy_serves_a_bf16_model(family, name):
    hf = _hf(family, torch.bfloat16)
    policy = POLICIES[name](BUDGET)
    prompt = random_tokens(1, N_PROMPT, seed=34)
    with policy.attach(hf) as cache:
        tokens, logits = hf_generate(hf, prompt, cache)
        held = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    assert tokens.shape == (1, N_NEW)
    assert all(t.dtype == torch.bfloat16 for t in held if t is not None)
    if isinstance(policy, KVDirect):  # exact shapes: the bf16 DynamicCache's bits too
        ref_tokens, ref_logits = hf_generate(hf, prompt, DynamicCache(config=hf.config))
        assert torch.equal(tokens, ref_tokens)
        assert all(torch.equal(a, b) for a, b in zip(ref_logits, logits, strict=True))


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("policy", [H2O(4), KVDirect(4), KVDirect(4, checkpoint="first_layer")])
def test_hooks_are_removed_on_exit_and_on_error(policy):
    hf = _hf("tiny-llama")
    before = _hook_count(hf)
    with policy.attach(hf) as cache:
        assert _hook_count(hf) > before
        hf_generate(hf, random_tokens(1, 8, seed=35), cache, n=3)
    assert _hook_count(hf) == before
    with pytest.raises(KeyError), policy.attach(hf):
        raise KeyError("boom")
    assert _hook_count(hf) == before


def test_the_held_tokens_are_the_policys():
    """Under attach the layers evict as in the package's loop: the budget, per KV head."""
    hf = _hf("tiny-llama")
    with WindowOnly(5).attach(hf) as cache:
        hf_generate(hf, random_tokens(1, N_PROMPT, seed=36), cache, n=4)
        n_seen = N_PROMPT + 3  # the last new token is picked, not fed
        for layer in cache.layers:
            assert layer.get_seq_length() == n_seen
            assert (layer.positions == torch.arange(n_seen - 5, n_seen)).all()


@pytest.mark.parametrize("policy", [H2O(4), KVDirect(4), SnapKV(4)], ids=str)
def test_batches_and_padding_are_refused_outside_fullkv(policy):
    hf = _hf("tiny-llama")
    with pytest.raises(ValueError, match=r"one sequence at a time \(batch 1\), got batch 2"):
        under(policy, hf, random_tokens(2, 8, seed=37), n=2)
    mask = torch.ones(1, 8, dtype=torch.long)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="padding"):
        under(policy, hf, random_tokens(1, 8, seed=37), n=2, attention_mask=mask)


@pytest.mark.parametrize("policy", [FullKV(), NoCache()], ids=str)
def test_a_left_padded_batch_gives_each_rows_own_tokens(policy):
    """Each row of a left-padded batch gives its own batch-1 run's tokens (up to a
    near-tie: padding changes the GEMM shapes, so logits differ in the last bits)."""
    hf = _hf("tiny-llama")
    prompts = [random_tokens(1, n, seed=38 + n) for n in (14, 9)]
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((2, width), PAD)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - p.shape[1] :] = p[0]
        mask[row, width - p.shape[1] :] = 1
    tokens, logits = under(policy, hf, ids, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone_tokens, alone_logits = under(policy, hf, p)
        compared = agree_up_to_a_near_tie(
            alone_tokens, alone_logits, tokens[row : row + 1], [l[row : row + 1] for l in logits]
        )
        assert compared >= 1


def test_scoring_policies_need_eager_attention():
    hf, _ = build_tiny_hf("tiny-llama")
    hf.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="only eager attention returns.*'sdpa'"):
        TOVA(4).attach(hf).__enter__()
    with WindowOnly(4).attach(hf) as cache:  # a positional rule needs no weights
        hf_generate(hf, random_tokens(1, 8, seed=39), cache, n=2)


def test_layers_without_attention_are_refused_by_name():
    hf, _ = build_tiny_hf("tiny-llama")
    hf.config.layer_types = ["full_attention", "linear_attention", "full_attention"]
    with pytest.raises(NotImplementedError, match=r"LlamaForCausalLM.*\['linear_attention'\]"):
        KVDirect(4).attach(hf).__enter__()
    with FullKV().attach(hf) as cache:  # FullKV is transformers' own DynamicCache
        assert isinstance(cache, DynamicCache)


def test_a_bridge_is_refused():
    with pytest.raises(TypeError, match="plain Hugging Face causal LM.*TransformerBridge"):
        H2O(4).attach(tiny_model("tiny-llama")).__enter__()


def test_a_budget_beyond_the_context_is_refused():
    with pytest.raises(ValueError, match="window of 3000 tokens exceeds the model's context"):
        KVDirect(3000).attach(_hf("tiny-llama")).__enter__()
