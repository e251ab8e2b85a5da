"""Eviction baselines as published: H2O and SnapKV keep `budget` tokens per KV head (query
heads of a grouped-query group averaged), TOVA/StreamingLLM/WindowOnly one set per layer.

Checked here: hand-computed per-head selections with GQA (4 query heads, 2 KV heads); the
budget held in every head after every step, with bytes to match; a per-head run equals a
brute-force reference (the whole sequence through HF's own modules, with an attention that
masks, per head, every key the policy had dropped); per_head=False is the earlier rule.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import transformers
from transformers import AttentionInterface

from kvdirect_interp import H2O, TOVA, SnapKV, SnapKVPerStep, StreamingLLM, WindowOnly, _tiny
from kvdirect_interp.memory import sliding_windows
from kvdirect_interp.policies.evict import EvictingLayer, group_attention
from tests.fixtures import random_tokens, tiny_model

LOGIT_TOL = 1e-4  # the reference recomputes every position in one pass: other GEMM shapes
CHUNKS = (10, 1, 1, 7, 1, 1, 5, 1, 1, 1)  # a prompt, then chat-like turns and single steps


# ---- models: the tiny ones with 2 KV heads, and Gemma 3 (sliding layers) with 2 KV heads ----


def _gemma3_gqa_config():
    config = _tiny.TINY_CONFIGS["tiny-gemma3"][1]()
    config.num_key_value_heads = 2  # the packaged tiny Gemma 3 has one KV head: no grouping
    return config


def _hf(config, attn: str = "eager"):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn)


@functools.cache
def _gemma3_gqa():
    """A bridge over a tiny random Gemma 3 with 4 query heads on 2 KV heads."""
    from transformer_lens.model_bridge import TransformerBridge

    hf = _hf(_gemma3_gqa_config()).eval()
    hf.config.architectures = [type(hf).__name__]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(
            "kvdirect-interp/tiny-gemma3-gqa", hf_model=hf, tokenizer=_tiny.byte_tokenizer()
        )


def _hf_like(name: str, model, attn: str = "eager"):
    """A plain HF model (no bridge, no cache) holding the bridge's own weights."""
    hf = _hf(_config(name), attn).eval()
    # the bridge wraps each HF module; its state dict names carry "._original_component"
    theirs = {
        k.replace("._original_component", ""): v
        for k, v in model.original_model.state_dict().items()
    }
    hf.load_state_dict({k: theirs[k] for k in hf.state_dict()})
    return hf


def _model(name: str):
    return _gemma3_gqa() if name == "gemma3-gqa" else tiny_model(name)


def _config(name: str):
    return _gemma3_gqa_config() if name == "gemma3-gqa" else _tiny.TINY_CONFIGS[name][1]()


# ---- hand examples: 4 query heads on 2 KV heads ----


def _two_head_layer(policy, n: int) -> EvictingLayer:
    """A layer of 2 KV heads holding n tokens; key/value of (head h, token j) is 10h + j."""
    layer = EvictingLayer(0, policy, None)
    kv = (10 * torch.arange(2.0)[:, None] + torch.arange(float(n)))[None, :, :, None]
    layer.append(kv.clone(), kv.clone())
    return layer


H2O_PATTERN = torch.tensor(  # [query heads 4, queries 2, keys 5]; heads 0, 1 read KV head 0
    [
        [[0.6, 0.1, 0.1, 0.1, 0.1], [0.5, 0.2, 0.1, 0.1, 0.1]],
        [[0.2, 0.4, 0.2, 0.1, 0.1], [0.1, 0.6, 0.1, 0.1, 0.1]],
        [[0.1, 0.1, 0.6, 0.1, 0.1], [0.1, 0.1, 0.2, 0.5, 0.1]],
        [[0.1, 0.1, 0.4, 0.3, 0.1], [0.2, 0.1, 0.3, 0.3, 0.1]],
    ]
)


@pytest.mark.parametrize(
    "per_head, scores, kept",
    [
        # received per KV head: head 0 [.7, .65, .25, .2, .2], head 1 [.25, .2, .75, .6, .2];
        # token 4 is the recent one, the two heaviest of 0-3 join it
        (True, [[0.7, 0.65, 0.25, 0.2, 0.2], [0.25, 0.2, 0.75, 0.6, 0.2]], [[0, 1, 4], [2, 3, 4]]),
        # one set: the mean over all four heads [.475, .425, .5, .4, .2]
        (False, [[0.475, 0.425, 0.5, 0.4, 0.2]], [[0, 2, 4], [0, 2, 4]]),
    ],
)
def test_h2o_per_head_hand_example(per_head, scores, kept):
    policy = H2O(3, recent=1, per_head=per_head)
    layer = _two_head_layer(policy, 5)
    policy.observe(layer, group_attention(H2O_PATTERN, kv_heads=2, per_head=per_head))
    torch.testing.assert_close(layer.scores, torch.tensor(scores, dtype=torch.float64))
    layer.after_forward()
    assert layer.positions.tolist() == kept
    # each head's K and V are that head's own kept tokens (value 10h + position)
    want = (10 * torch.arange(2)[:, None] + torch.tensor(kept)).float()
    assert torch.equal(layer.keys[0, :, :, 0], want) and torch.equal(layer.values[0, :, :, 0], want)


SNAPKV_ROWS = torch.tensor(  # the last query's row [query heads 4, 1, keys 6]
    [
        [[0.0, 0.0, 0.0, 0.8, 0.2, 0.0]],
        [[0.0, 0.0, 0.2, 0.6, 0.2, 0.0]],
        [[0.7, 0.1, 0.0, 0.0, 0.0, 0.2]],
        [[0.5, 0.3, 0.0, 0.0, 0.0, 0.2]],
    ]
)


@pytest.mark.parametrize(
    "per_head, pooled, kept",
    [
        # votes per KV head: [0, 0, .1, .7, .2, 0] and [.6, .2, 0, 0, 0, .2]; pooled over 3
        # neighbours (edges over the valid cells); token 5 is the observation window
        (
            True,
            [[0, 0.1 / 3, 0.8 / 3, 1 / 3, 0.3, 0.1], [0.4, 0.8 / 3, 0.2 / 3, 0, 0.2 / 3, 0.1]],
            [[3, 4, 5], [0, 1, 5]],
        ),
        # one set: votes [.3, .1, .05, .35, .1, .1] (mean over all four heads)
        (False, [[0.2, 0.15, 0.5 / 3, 0.5 / 3, 0.55 / 3, 0.1]], [[0, 4, 5], [0, 4, 5]]),
    ],
)
def test_snapkv_per_step_per_head_hand_example(per_head, pooled, kept):
    policy = SnapKVPerStep(3, observation_window=1, kernel=3, per_head=per_head)
    layer = _two_head_layer(policy, 6)
    policy.observe(layer, group_attention(SNAPKV_ROWS, kv_heads=2, per_head=per_head))
    torch.testing.assert_close(layer.scores, torch.tensor(pooled, dtype=torch.float64))
    layer.after_forward()
    assert layer.positions.tolist() == kept
    want = (10 * torch.arange(2)[:, None] + torch.tensor(kept)).float()
    assert torch.equal(layer.keys[0, :, :, 0], want)


@pytest.mark.parametrize(
    "per_head, pooled, kept",
    [
        # compress-once pools over tokens 0-4 only (5 is the window), the zero padding
        # counted: votes [0, 0, .1, .7, .2] and [.6, .2, 0, 0, 0] over 3
        (
            True,
            [[0, 0.1 / 3, 0.8 / 3, 1 / 3, 0.3], [0.8 / 3, 0.8 / 3, 0.2 / 3, 0, 0]],
            [[3, 4, 5], [0, 1, 5]],
        ),
        # one set: votes [.3, .1, .05, .35, .1] (mean over all four heads)
        (False, [[0.4 / 3, 0.45 / 3, 0.5 / 3, 0.5 / 3, 0.45 / 3]], [[2, 3, 5], [2, 3, 5]]),
    ],
)
def test_snapkv_per_head_hand_example(per_head, pooled, kept):
    policy = SnapKV(3, observation_window=1, kernel=3, per_head=per_head)
    layer = _two_head_layer(policy, 6)
    policy.observe(layer, group_attention(SNAPKV_ROWS, kv_heads=2, per_head=per_head))
    torch.testing.assert_close(
        policy.scores(layer)[:, :5], torch.tensor(pooled, dtype=torch.float64)
    )
    layer.after_forward()
    assert layer.positions.tolist() == kept
    want = (10 * torch.arange(2)[:, None] + torch.tensor(kept)).float()
    assert torch.equal(layer.keys[0, :, :, 0], want)


def test_defaults_follow_the_papers():
    assert H2O(4).per_head and SnapKVPerStep(4, observation_window=2).per_head
    assert SnapKV(4) == SnapKV(4, observation_window=32, kernel=5, pooling="avg", per_head=True)
    assert not any(p.per_head for p in (TOVA(4), StreamingLLM(4, sinks=1), WindowOnly(4)))
    with pytest.raises(ValueError, match="per_head must be True or False"):
        H2O(4, per_head=1)


# ---- every step of a run on a tiny model ----


class _Recorder:
    """Hooks on every layer's attention pattern that record each forward pass as the layer
    saw it: (start, q, positions held before the pass [kv_heads, n], pattern [heads, q, kv]).
    Hooks run after update() and before after_forward(), so the new tokens are the last q."""

    def __init__(self, runner) -> None:
        self.passes: list[dict[int, tuple]] = []
        own = runner.hooks
        runner.hooks = lambda: (
            own() + [(f"blocks.{l.layer}.attn.hook_pattern", self._hook(l)) for l in runner.layers]
        )

    def _hook(self, layer):
        def record(pattern, hook):
            if layer.layer == 0:
                self.passes.append({})
            q = pattern.shape[2]
            held = layer.positions[:, : layer.positions.shape[1] - q].clone()
            self.passes[-1][layer.layer] = (layer.seen - q, q, held, pattern[0].detach().clone())

        return record


def _run(policy, name: str, chunks=CHUNKS):
    """Feed the chunks; per runner.forward its logits [d_vocab] and last position."""
    model = _model(name)
    runner = policy.runner(model)
    recorder = _Recorder(runner)
    toks = random_tokens(1, sum(chunks), seed=31)
    out, start = [], 0
    for size in chunks:
        logits = runner.forward(toks[:, start : start + size])
        start += size
        out.append((logits[0], start - 1, [p.clone() for p in runner.kept_positions()]))
    return model, runner, recorder, toks, out


POLICIES = [
    H2O(6, recent=2),
    H2O(6, recent=0),
    H2O(6, recent=2, per_head=False),
    SnapKVPerStep(6, observation_window=2, kernel=3),
    SnapKVPerStep(6, observation_window=2, kernel=3, per_head=False),
    TOVA(6),
    StreamingLLM(6, sinks=2),
    WindowOnly(6),
]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "gemma3-gqa"])
@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_every_head_holds_the_budget_after_every_step(name, policy):
    model, runner, _, _, out = _run(policy, name)
    windows = sliding_windows(model)
    for _, last, kept in out:
        seen = last + 1
        for layer, positions, window in zip(runner.layers, kept, windows, strict=True):
            visible = seen if window is None else min(seen, window - 1)
            n = min(policy.budget, visible)  # the budget, or all a sliding window still sees
            heads = layer.keys.shape[1]
            assert positions.shape == (heads, n), (layer.layer, seen)
            for row in positions:  # ascending, distinct, seen, within the window
                assert torch.equal(row, row.unique()) and int(row.max()) < seen
                if window is not None:
                    assert int(row.min()) > seen - window
            if not policy.per_head:
                assert (positions == positions[0]).all()  # one set shared by all heads
    # bytes held are the budget's K/V in every head, nothing more
    d_head, item = model.cfg.d_head, runner.layers[0].keys.element_size()
    want = sum(2 * l.keys.shape[1] * l.keys.shape[2] * d_head * item for l in runner.layers)
    assert runner.bytes_held()["kv"] == want


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "gemma3-gqa"])
@pytest.mark.parametrize(
    "policy",
    [SnapKV(6, observation_window=2, kernel=3), SnapKV(6, observation_window=2, per_head=False)],
    ids=repr,
)
def test_snapkv_holds_the_budget_after_each_chunk_and_grows_while_decoding(name, policy):
    """Compress-once: after a chunk of 2+ tokens every KV head holds the budget (or all it
    had, if no more), then one more per decoded token; sliding layers at most what their
    window still shows, all of them as many."""
    model, runner, _, _, out = _run(policy, name)
    windows = sliding_windows(model)
    held = 0
    for size, (_, last, kept) in zip(CHUNKS, out, strict=True):
        seen = last + 1
        held = policy.budget if size > 1 and held + size > policy.budget else held + size
        sliding = set()
        for layer, positions, window in zip(runner.layers, kept, windows, strict=True):
            heads, n = layer.keys.shape[1], positions.shape[1]
            assert positions.shape == (heads, n)
            for row in positions:
                assert torch.equal(row, row.unique()) and int(row.max()) == seen - 1
                if window is not None:
                    assert int(row.min()) > seen - window
            if window is None:
                assert n == held, (layer.layer, seen)
            else:
                assert n <= min(held, window - 1)
                sliding.add(n)
            if not policy.per_head:
                assert (positions == positions[0]).all()
        assert len(sliding) <= 1  # one mask serves every sliding layer
    d_head, item = model.cfg.d_head, runner.layers[0].keys.element_size()
    want = sum(2 * l.keys.shape[1] * l.keys.shape[2] * d_head * item for l in runner.layers)
    assert runner.bytes_held()["kv"] == want


def test_per_head_keeps_different_tokens_in_different_heads():
    _, _, _, _, out = _run(H2O(6, recent=2), "tiny-llama")
    assert any((p[0] != p[1]).any() for _, _, kept in out for p in kept)


# ---- a brute-force reference: plain attention with each dropped key masked per head ----


def _allowed(recorder: _Recorder, n_layers: int, n_pos: int, windows) -> list[torch.Tensor]:
    """Per layer, bool [kv_heads, n_pos, n_pos]: which keys each query saw in the policy's
    run: those its KV head held before the query's pass, the pass's own up to itself, and
    (sliding layers) only inside the window."""
    out = []
    for l in range(n_layers):
        heads = recorder.passes[0][l][2].shape[0]
        mask = torch.zeros(heads, n_pos, n_pos, dtype=torch.bool)
        for rec in recorder.passes:
            start, q, held, _ = rec[l]
            for p in range(start, start + q):
                mask[torch.arange(heads)[:, None], p, held] = True
                mask[:, p, start : p + 1] = True
        if windows[l] is not None:
            pos = torch.arange(n_pos)
            mask &= (pos[None, :] > pos[:, None] - windows[l])[None]
        out.append(mask)
    return out


def _masked_attention(masks: list[torch.Tensor]):
    """HF's eager attention with the model's mask replaced by one per KV head (masks[l]
    [kv_heads, q, kv]); query head i reads KV head i // groups, as repeat_kv lays it out."""

    def attend(module, query, key, value, attention_mask, scaling=None, softcap=None, **kw):
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        scores = query @ key.transpose(2, 3) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        allowed = masks[module.layer_idx].repeat_interleave(groups, 0)[None]
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
        return (weights @ value).transpose(1, 2).contiguous(), weights

    return attend


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "gemma3-gqa"])
@pytest.mark.parametrize(
    "policy",
    [
        H2O(6, recent=2),
        SnapKVPerStep(6, observation_window=2, kernel=3),
        SnapKV(6, observation_window=2, kernel=3),
        SnapKV(6, observation_window=3, kernel=3, pooling="max"),
        TOVA(6),
    ],
    ids=repr,
)
def test_a_per_head_run_equals_plain_attention_masked_per_head(name, policy):
    model, runner, recorder, toks, out = _run(policy, name)
    n_pos = toks.shape[1]
    windows = sliding_windows(model)
    masks = _allowed(recorder, len(runner.layers), n_pos, windows)
    AttentionInterface.register("kd_per_head_mask", _masked_attention(masks))
    with torch.no_grad():
        ref = _hf_like(name, model, "kd_per_head_mask")(toks).logits[0]  # no cache
        full = _hf_like(name, model)(toks).logits[0]  # the model's own masks: every key
    for logits, last, _ in out:
        torch.testing.assert_close(logits, ref[last], rtol=0, atol=LOGIT_TOL)
    # the check has teeth: attention over every key gives other logits
    assert (full[n_pos - 1] - ref[n_pos - 1]).abs().max() > 10 * LOGIT_TOL


# ---- per_head=False is the earlier rule: one set per layer, scored by the mean over heads ----


def _h2o_reference(recorder: _Recorder, layer: int, policy: H2O, per_head: bool):
    """H2O replayed from the captured patterns, by position: positions held after each pass
    per KV head."""
    score: dict[tuple[int, int], float] = {}
    held = None
    out = []
    for rec in recorder.passes:
        start, q, before, pattern = rec[layer]
        heads = before.shape[0]
        pat = pattern.double()
        groups = (
            pat.view(heads, -1, *pat.shape[1:]).mean(1) if per_head else pat.mean(0)[None]
        ).expand(heads, -1, -1)
        held = [list(before[h].tolist()) + list(range(start, start + q)) for h in range(heads)]
        for h in range(heads):
            received = groups[h].sum(0)
            for j, p in enumerate(held[h]):
                score[h, p] = score.get((h, p), 0.0) + float(received[j])
            if len(held[h]) > policy.budget:
                recent = held[h][len(held[h]) - policy.n_recent :]
                rest = [p for p in held[h] if p not in recent]
                rest.sort(key=lambda p: (-score[h, p], p))  # ties: the earlier token
                held[h] = sorted(rest[: policy.budget - len(recent)] + recent)
        out.append(held)
    return out


@pytest.mark.parametrize("per_head", [True, False])
def test_h2o_selection_equals_a_replay_of_its_rule(per_head):
    policy = H2O(6, recent=2, per_head=per_head)
    _, runner, recorder, _, out = _run(policy, "tiny-llama", chunks=(1,) * 16)
    for l in range(len(runner.layers)):
        replay = _h2o_reference(recorder, l, policy, per_head)
        assert replay == [kept[l].tolist() for _, _, kept in out], l


@pytest.mark.parametrize("snapkv", [SnapKVPerStep, SnapKV])
def test_one_kv_head_makes_per_head_and_shared_the_same(snapkv):
    # tiny-mistral has 4 query heads on 1 KV head: the group is all heads, bit for bit
    a = _run(snapkv(6, observation_window=2, kernel=3), "tiny-mistral")[4]
    b = _run(snapkv(6, observation_window=2, kernel=3, per_head=False), "tiny-mistral")[4]
    for (la, _, pa), (lb, _, pb) in zip(a, b, strict=True):
        assert torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
