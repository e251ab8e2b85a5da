"""KV-Direct's streaming replay (kvdirect_stream.py): the replay modes rebuild the evicted
tokens' K/V one layer at a time inside the step's own forward pass. Checked here: the same
bits as FullKV (greedy, exact shapes; one-token and multi-token passes, every tiny family,
Gemma 3 past its sliding window), the same bits as the one-shot replay, the transient
bytes counted from the model's dims, and the settings and refusals."""

import functools

import pytest
import torch
import transformers

from kvdirect_interp import FullKV, KVDirect, Session, generate, load_model
from kvdirect_interp._tiny import byte_tokenizer
from kvdirect_interp.cost import Arch
from kvdirect_interp.policies import kvdirect_stream
from kvdirect_interp.policies.kvdirect import REPLAY_MODES
from tests.fixtures import TINY, random_tokens, tiny_model

N_PROMPT, N_NEW, WINDOW = 20, 16, 6
TURNS = ["Hello there!", "What is two plus two?", "Thanks, bye."]


def _same_bits(ref, got) -> None:
    assert torch.equal(ref.tokens, got.tokens)
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, got.logits, strict=True))


@functools.cache
def _fullkv(name: str):
    return generate(
        tiny_model(name),
        random_tokens(1, N_PROMPT, seed=21),
        max_new_tokens=N_NEW,
        keep_logits=True,
    )


@pytest.mark.parametrize("mode", REPLAY_MODES)
@pytest.mark.parametrize("name", TINY)
def test_streaming_gives_fullkv_bits(name, mode):
    got = generate(
        tiny_model(name),
        random_tokens(1, N_PROMPT, seed=21),
        max_new_tokens=N_NEW,
        keep_logits=True,
        cache=KVDirect(WINDOW, checkpoint=mode),  # streaming is the default
    )
    _same_bits(_fullkv(name), got)
    assert max(r["rebuilt_bytes"] for r in got.memory) > 0  # tokens were evicted


@pytest.mark.parametrize("mode", REPLAY_MODES)
@pytest.mark.parametrize("name", TINY)
def test_streaming_in_a_chat_gives_fullkv_bits(name, mode):
    """Turns (multi-token passes) after decoded tokens (one-token passes): segments of mixed
    lengths are replayed, each with its own pass's shape (Gemma 3: past its window of 8)."""
    model = tiny_model(name)
    sessions = [Session(model, FullKV()), Session(model, KVDirect(4, checkpoint=mode))]
    for text in TURNS:
        a, b = (s.say(text, max_new_tokens=6, stop_at_eos=False) for s in sessions)
        assert torch.equal(a.new_tokens, b.new_tokens)
        assert torch.equal(sessions[0].logits, sessions[1].logits)
    runner = sessions[1].runner
    assert len({n for _, n in runner.segments.spans}) > 1  # passes of several lengths
    if mode == "first_layer":  # one checkpoint per token: the layered passes add none
        assert runner.first_resid.shape[0] == runner.n_seen


@pytest.mark.parametrize("mode", REPLAY_MODES)
@pytest.mark.parametrize("exact", [True, False])
def test_streaming_gives_the_one_shot_bits(mode, exact):
    model = tiny_model("tiny-gemma3")
    kw = dict(max_new_tokens=N_NEW, keep_logits=True)
    prompt = random_tokens(1, N_PROMPT, seed=22)
    runs = [
        generate(model, prompt, cache=KVDirect(WINDOW, mode, exact, replay=r), **kw)
        for r in ("one_shot", "streaming")
    ]
    _same_bits(*runs)


@functools.cache
def _deep_llama():
    """A tiny llama with more layers than the tiny set's and full multi-head K/V: one layer's
    K/V are a small part of every layer's."""
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        vocab_size=259,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = transformers.LlamaForCausalLM(config).eval()
    return load_model(hf, tokenizer=byte_tokenizer())


def _transients(model, replay: str) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """Per pass (a 20-token prefill, then one-token steps): the runner's bytes_transient,
    and the chunks replayed in it."""
    runner = KVDirect(WINDOW, checkpoint="token_ids", replay=replay).runner(model)
    out, chunks = [], []
    tokens = random_tokens(1, N_PROMPT + N_NEW, seed=23)
    feeds = [
        tokens[:, :N_PROMPT],
        *(tokens[:, i : i + 1] for i in range(N_PROMPT, N_PROMPT + N_NEW)),
    ]
    with torch.no_grad():
        for feed in feeds:
            n_evicted = max(0, runner.n_seen - WINDOW)
            chunks.append([(s, n) for s, n in runner.segments.spans if s < n_evicted])
            runner.forward(feed)
            out.append(runner.bytes_transient())
    return out, chunks


@pytest.mark.parametrize("name", ["tiny-llama", "deep-llama"])
def test_streaming_transient_is_one_layers_kv_and_the_hidden_state(name):
    model = _deep_llama() if name == "deep-llama" else tiny_model(name)
    cfg = model.cfg
    kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    kv = 2 * kv_heads * cfg.d_head * 4  # bytes of one layer's K+V per token (float32)
    hidden = cfg.d_model * 4
    stream, chunks = _transients(model, "streaming")
    one_shot, _ = _transients(model, "one_shot")
    for got, full, spans in zip(stream, one_shot, chunks, strict=True):
        if not spans:  # nothing evicted yet
            assert got == full == 0
            continue
        n_rows = sum(spans[-1])  # whole passes are replayed
        # at the end of each chunk: the hidden state of every row, the layer's K/V so far
        # and the chunk's output
        assert got == max(n_rows * hidden + (s + n) * kv + n * hidden for s, n in spans)
        assert got <= n_rows * (2 * hidden + kv)
        assert full == cfg.n_layers * n_rows * kv  # every layer's K/V at once
    assert _transients(model, "streaming")[0] == stream  # counted, and the same on a rerun
    if name == "deep-llama":
        assert max(stream) * 3 < max(one_shot)


def test_replay_setting_is_checked_and_kept_out_of_the_name():
    with pytest.raises(ValueError, match=r"unknown replay 'lazy'; accepted: \['streaming'"):
        KVDirect(4, checkpoint="token_ids", replay="lazy")
    policies = [KVDirect(4, checkpoint="first_layer", replay=r) for r in ("streaming", "one_shot")]
    assert {p.name for p in policies} == {"KVDirect[first_layer]"}
    assert KVDirect(4).replay == "streaming"
    arch = Arch.of(tiny_model("tiny-llama"))
    assert policies[0].step_flops(arch, 100) == policies[1].step_flops(arch, 100)


def test_rebuild_modes_ignore_the_replay_setting():
    model = tiny_model("tiny-qwen2")
    prompt = random_tokens(1, N_PROMPT, seed=24)
    runs = [
        generate(model, prompt, max_new_tokens=4, keep_logits=True, cache=KVDirect(6, replay=r))
        for r in ("streaming", "one_shot")
    ]
    _same_bits(*runs)


def test_streaming_refuses_by_name_where_layers_cannot_run_alone(monkeypatch):
    def cannot(model, tree):
        raise LookupError("the decoder layers are not one list of the HF tree")

    monkeypatch.setattr(kvdirect_stream, "_decoder_stack", cannot)
    model = tiny_model("tiny-llama")
    with pytest.raises(NotImplementedError, match="replay='one_shot'") as err:
        KVDirect(4, checkpoint="token_ids").runner(model)
    assert "not one list of the HF tree" in str(err.value)
    # the one-shot replay and the rebuild modes do not need it
    KVDirect(4, checkpoint="token_ids", replay="one_shot").runner(model)
    KVDirect(4, checkpoint="every_layer").runner(model)
