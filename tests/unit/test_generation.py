import pytest
import torch

from kvdirect_interp import memory
from kvdirect_interp.generation import Session, forced_and_free, fork, generate
from kvdirect_interp.memory import sliding_windows
from kvdirect_interp.observers import PeakMemory
from kvdirect_interp.policies import H2O, POLICIES, FullKV, KVDirect, NoCache
from tests.fixtures import random_tokens, tiny_model

# Tiny random models have near-ties: logits from different GEMM shapes (cached vs uncached)
# differ by ~1e-5, so tokens are compared only where the top-2 margin exceeds this.
LOGIT_TOL = 1e-4


def test_fullkv_greedy_equals_transformer_lens_generate(tiny):
    prompt = random_tokens(1, 10, seed=0)
    ref = tiny.generate(
        prompt,
        max_new_tokens=20,
        do_sample=False,
        stop_at_eos=False,
        use_past_kv_cache=True,
        verbose=False,
    )
    # TransformerLens's loop may run other GEMM shapes: tokens must agree up to the first
    # near-tie (top-2 margin within twice the measured cross-shape logit noise)
    ours = generate(tiny, prompt, max_new_tokens=20, keep_logits=True)
    assert torch.equal(ours.tokens[:, :10], ref[:, :10])
    compared = 0
    for step, logits in enumerate(ours.logits):
        top2 = logits.topk(2).values
        if float(top2[0, 0] - top2[0, 1]) <= 2 * LOGIT_TOL:
            break
        assert ours.new_tokens[0, step] == ref[0, 10 + step], f"step {step}"
        compared += 1
    assert compared >= 1


def test_no_cache_agrees_with_fullkv(tiny):
    prompt = random_tokens(1, 10, seed=1)
    full = generate(tiny, prompt, max_new_tokens=20, keep_logits=True)
    none = generate(tiny, prompt, max_new_tokens=20, cache=NoCache(), keep_logits=True)
    assert torch.equal(full.logits[0], none.logits[0])  # the prefill is the same computation
    for step, (a, b) in enumerate(zip(full.logits, none.logits, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=LOGIT_TOL)
        top2 = a.topk(2).values
        if float(top2[0, 0] - top2[0, 1]) > 2 * LOGIT_TOL:
            assert full.new_tokens[0, step] == none.new_tokens[0, step]
        else:
            break  # past a near-tie the two continuations may part ways legitimately


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = tiny_model("tiny-llama")
    prompt = random_tokens(1, 8, seed=2)
    kw = dict(max_new_tokens=15, do_sample=True, temperature=0.9, top_k=50, top_p=0.95)
    a = generate(model, prompt, seed=3, **kw)
    b = generate(model, prompt, seed=3, **kw)
    c = generate(model, prompt, seed=4, **kw)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def test_fullkv_bytes_match_the_shape_formula(tiny):
    prompt = random_tokens(1, 10, seed=5)
    out = generate(tiny, prompt, max_new_tokens=5, cache=FullKV())
    cfg = tiny.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    per_layer_token = 2 * n_kv * cfg.d_head * 4  # K and V of one token at one layer, fp32
    seen = out.memory[-1]["tokens_seen"]
    # a sliding layer holds what the next query can still see besides itself: window - 1
    held = [seen if w is None else min(seen, w - 1) for w in sliding_windows(tiny)]
    assert out.memory[-1]["kv_bytes"] == sum(held) * per_layer_token
    if tiny.cfg.model_name.endswith("tiny-gemma3"):  # its window (8) binds: not the full cache
        assert sum(held) < seen * cfg.n_layers


def test_no_cache_holds_only_token_ids():
    out = generate(
        tiny_model("tiny-gpt2"), random_tokens(1, 6, seed=6), max_new_tokens=4, cache=NoCache()
    )
    # prefill first; the 4th new token is picked, not fed
    assert [m["token_ids_bytes"] for m in out.memory] == [24, 28, 32, 36]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(max_new_tokens=3, temperature=0.0), "temperature must be > 0"),
        (dict(max_new_tokens=3, top_k=0), "top_k must be None or an integer >= 1"),
        (dict(max_new_tokens=3, top_p=1.5), "top_p must be None or in \\(0, 1\\]"),
        (dict(max_new_tokens=2100), "exceeds the model's context of 2048"),
    ],
)
def test_bad_generation_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model("tiny-llama"), "hello", **kwargs)


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="empty prompt"):
        generate(tiny_model("tiny-llama"), "", max_new_tokens=2)


@pytest.mark.parametrize("policy", [FullKV(), KVDirect(4, checkpoint="first_layer")], ids=str)
def test_a_sessions_first_turn_is_generate_on_the_same_chat(policy):
    """generate and Session.say share one feed-then-decode path."""
    model = tiny_model("tiny-qwen2")
    chat = [{"role": "user", "content": "Name three colours."}]
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.7)
    gen = generate(model, chat, cache=policy, seed=4, **kw)
    turn = Session(model, policy, seed=4).say(chat[0]["content"], stop_at_eos=False, **kw)
    assert torch.equal(gen.tokens, turn.tokens) and torch.equal(gen.new_tokens, turn.new_tokens)
    # peak RSS and seconds belong to the process and the moment, not to the path
    drop = ("peak_rss_bytes", "seconds")
    strip = lambda records: [{k: v for k, v in r.items() if k not in drop} for r in records]
    # the same records, and the Session also feeds its last token (its next turn follows it)
    assert strip(gen.memory) == strip(turn.memory)[:-1]
    assert turn.memory[-1]["tokens_seen"] == gen.tokens.shape[1]


# ---- forced_and_free: two runs from one prefill ----

_NOT_STATE = {"seconds", "peak_rss_bytes", "cuda_max_allocated_bytes"}  # measured, not state


def _same_generation(got, want, *, logits: bool) -> None:
    assert torch.equal(got.tokens, want.tokens)
    assert got.text == want.text
    assert [{k: v for k, v in r.items() if k not in _NOT_STATE} for r in got.memory] == [
        {k: v for k, v in r.items() if k not in _NOT_STATE} for r in want.memory
    ]
    if logits:
        assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits, strict=True))


@pytest.mark.parametrize("name", list(POLICIES))
def test_forced_and_free_equal_two_separate_generations(tiny, name):
    """Forking the forced run where the policy first disagrees gives the free run bit for
    bit, for every registered policy on every tiny family (forced on FullKV's tokens, as
    the claim-5 table does, and on random tokens, which fork at the first step)."""
    model, prompt, n = tiny, random_tokens(1, 14, seed=3), 10
    policy = POLICIES[name](4)
    for force in (generate(model, prompt, max_new_tokens=n).new_tokens, random_tokens(1, n, 4)):
        forced, free = forced_and_free(model, prompt, max_new_tokens=n, cache=policy, force=force)
        want_forced = generate(
            model, prompt, max_new_tokens=n, cache=policy, keep_logits=True, force=force
        )
        _same_generation(forced, want_forced, logits=True)
        want_free = generate(model, prompt, max_new_tokens=n, cache=policy)
        _same_generation(free, want_free, logits=False)
        agrees = all(
            torch.equal(step.argmax(-1), force[:, i]) for i, step in enumerate(forced.logits)
        )
        assert (free is forced) == agrees


@torch.no_grad()
def test_a_fork_shares_the_model_and_nothing_else():
    model = tiny_model("tiny-llama")
    runner = H2O(4).runner(model)
    runner.prefill(random_tokens(1, 9, seed=5))
    copy = fork(runner)
    assert copy.model is model and copy.cache is not runner.cache

    def held(r):
        return [t.clone() for layer in r.layers for t in (layer.keys, layer.values)]

    before = held(copy)
    runner.step(torch.tensor([1]))
    assert copy.n_seen == 9 and runner.n_seen == 10
    assert all(torch.equal(a, b) for a, b in zip(before, held(copy), strict=True))


def test_a_plain_generate_touches_no_process_wide_state(monkeypatch, tmp_path):
    """Measuring the process is opt in: only an observer resets the peak RSS (it writes
    /proc/self/clear_refs), and only its records carry the peak."""
    clear_refs = tmp_path / "clear_refs"
    monkeypatch.setattr(memory, "_CLEAR_REFS", clear_refs)
    model, tokens = tiny_model("tiny-llama"), random_tokens(1, 6, seed=4)
    plain = generate(model, tokens, max_new_tokens=3)
    assert not clear_refs.exists()
    assert not any("peak_rss_bytes" in r for r in plain.memory)
    seen = generate(model, tokens, max_new_tokens=3, observer=PeakMemory())
    assert clear_refs.read_text() == "5"
    assert all("peak_rss_bytes" in r for r in seen.memory)
    assert torch.equal(plain.tokens, seen.tokens)
