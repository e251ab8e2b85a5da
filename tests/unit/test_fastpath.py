"""The no-hooks fast path must be the bridge's computation, bit for bit, and must step aside
whenever anything is hooked."""

import pytest
import torch

from kvdirect_interp import fastpath, forward, load_model
from kvdirect_interp.fastpath import fast_path
from kvdirect_interp.generation import generate
from kvdirect_interp.policies import (
    H2O,
    TOVA,
    FullKV,
    KVDirect,
    NoCache,
    SnapKV,
    StreamingLLM,
    WindowOnly,
)
from tests.fixtures import random_tokens

# families whose bridge runs HF's own modules: the fast path must be on for them
FAST = {"tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-mistral"}


def test_plain_model_shares_the_bridge_tensors(tiny):
    plain = fastpath.build_plain(tiny)
    bridge_ptrs = {t.data_ptr() for t in [*tiny.parameters(), *tiny.buffers()]}
    for name, t in [*plain.named_parameters(), *plain.named_buffers()]:
        assert t.device.type != "meta", name
        assert t.data_ptr() in bridge_ptrs, f"{name} is a copy, not the bridge's tensor"


def test_fast_path_only_where_it_gives_the_bridge_bits(tiny):
    fp = fast_path(tiny)
    assert fast_path(tiny) is fp  # one per model
    fp.status()
    plain = fp.plain
    fp.status()
    assert fp.plain is plain  # built and probed once while the tensors stay
    if tiny.cfg.model_name.removeprefix("kvdirect-interp/") in FAST:
        assert plain is not None and fp.status()["fast_path"]
    if plain is None:  # a probe said no: the status says why
        assert not fp.status()["fast_path"] and fp.status()["reason"] != "available"
    if plain is not None:
        tokens = random_tokens(2, 12, seed=4)
        with torch.no_grad():
            assert torch.equal(plain(input_ids=tokens).logits, tiny(tokens))


POLICIES = [
    FullKV(),
    NoCache(),
    WindowOnly(6),
    StreamingLLM(6, sinks=2),
    # their hooks (attention pattern, resid_pre) run on the plain tree's modules
    H2O(6),
    SnapKV(6, observation_window=2, kernel=1),
    TOVA(6),
    *(KVDirect(5, checkpoint=m) for m in ("every_layer", "first_layer", "token_ids", "min_bytes")),
]


@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_generation_is_bitwise_the_same_with_and_without_the_fast_path(tiny, policy):
    prompt = random_tokens(1, 10, seed=5)
    fast = generate(tiny, prompt, max_new_tokens=12, keep_logits=True, cache=policy)
    # an observing hook (it changes nothing) forces every forward pass through the bridge
    seen = []
    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: seen.append(1))]):
        slow = generate(tiny, prompt, max_new_tokens=12, keep_logits=True, cache=policy)
    # the prefill and 11 steps ran on the bridge (the 12th token is picked, not fed; a
    # re-prefill's replays are passes too)
    replays = isinstance(policy, KVDirect) and policy.checkpoint in ("first_layer", "token_ids")
    assert len(seen) >= 12 if replays else len(seen) == 12
    assert torch.equal(fast.tokens, slow.tokens)
    assert all(torch.equal(a, b) for a, b in zip(fast.logits, slow.logits, strict=True))


def test_any_hook_disables_the_fast_path(tiny):
    fp = fast_path(tiny)
    assert fp._user_hooks() is None
    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)]):
        assert "hook is attached" in fp._user_hooks()
        assert fp.status()["fast_path"] is False
    assert fp._user_hooks() is None
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert "global" in fp._user_hooks()
    finally:
        handle.remove()


def test_a_patching_hook_changes_fullkv_generation(tiny):
    """A user's hook must take effect under FullKV: the fast path would silently skip it."""
    prompt = random_tokens(1, 8, seed=6)
    clean = generate(tiny, prompt, max_new_tokens=3, keep_logits=True)
    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x * 0)]):
        patched = generate(tiny, prompt, max_new_tokens=3, keep_logits=True)
    assert not torch.equal(clean.logits[0], patched.logits[0])


def test_a_layout_the_mapping_cannot_follow_falls_back_to_the_bridge(monkeypatch):
    model = load_model("tiny-llama", seed=1)  # a fresh bridge: nothing built for it yet

    def unknown(bridge):
        raise LookupError("no bridge tensor for the HF tensor 'x'")

    monkeypatch.setattr(fastpath, "build_plain", unknown)
    status = fast_path(model).status()
    assert not status["fast_path"] and "cannot be mapped" in status["reason"]
    prompt = random_tokens(1, 6, seed=7)
    out = generate(model, prompt, max_new_tokens=4, keep_logits=True)
    with torch.no_grad():  # the prefill's logits are the bridge's own
        assert torch.equal(out.logits[0], model(prompt, logits_to_keep=1)[:, -1])


def test_policy_hook_points_run_on_the_plain_tree_where_probed_equal(tiny):
    fp = fast_path(tiny)
    hooks = [
        ("blocks.1.hook_resid_pre", lambda x, hook: None),
        ("blocks.0.attn.hook_pattern", lambda x, hook: None),
    ]
    choice, points = fp.choose(hooks)
    if tiny.cfg.model_name.removeprefix("kvdirect-interp/") in FAST:
        assert choice.path == "fast" and len(points) == 2
    # any other hook point goes to the bridge
    choice, _ = fp.choose([("blocks.0.hook_resid_post", print)])
    assert choice.path == "bridge" and choice.reason


def test_hook_points_are_the_bridge_tensors(tiny):
    """What a policy's hook sees on the fast path is what it sees on the bridge, bitwise."""
    if fast_path(tiny).choose([("blocks.0.hook_resid_pre", print)])[0].path != "fast":
        pytest.skip("this family runs its hooks on the bridge")
    names = [
        f"blocks.{l}.{h}"
        for l in range(tiny.cfg.n_layers)
        for h in ("hook_resid_pre", "attn.hook_pattern")
    ]
    seen = {"fast": {}, "bridge": {}}
    tokens = random_tokens(1, 9, seed=8)

    def hooks(path):
        return [(n, lambda x, hook, n=n: seen[path].__setitem__(n, x.clone())) for n in names]

    with torch.no_grad():
        fast = forward(tiny, tokens, hooks=hooks("fast"), path="fast")
        with tiny.hooks(fwd_hooks=hooks("bridge")):
            slow = tiny(tokens)
    assert torch.equal(fast, slow)
    assert seen["fast"].keys() == seen["bridge"].keys() == set(names)
    assert all(torch.equal(seen["fast"][n], seen["bridge"][n]) for n in names)


def test_a_wrong_hook_mapping_is_caught_by_the_probe(monkeypatch):
    model = load_model("tiny-llama", seed=2)  # a fresh bridge: nothing probed for it yet
    fp = fast_path(model)
    fp.status()  # builds the plain tree
    right = fp._counterpart

    def shifted(component):  # every hook one layer too deep
        module = right(component)
        layers = fp.plain.model.layers
        for i, layer in enumerate(layers[:-1]):
            if module is layer:
                return layers[i + 1]
        return module

    monkeypatch.setattr(fp, "_counterpart", shifted)
    choice, _ = fp.choose([("blocks.0.hook_resid_pre", print)])
    assert choice == fastpath.Choice("bridge", "the hook-point probe failed")


def test_a_replaced_pattern_is_refused_on_the_fast_path():
    model = load_model("tiny-llama")
    hooks = [("blocks.0.attn.hook_pattern", lambda x, hook: x * 0)]
    with pytest.raises(RuntimeError, match="observed, not replaced"):
        forward(model, random_tokens(1, 4, seed=9), hooks=hooks)


def test_forward_paths_give_the_bridge_bits_and_say_which_ran():
    model = load_model("tiny-llama")
    tokens = random_tokens(1, 7, seed=10)
    with torch.no_grad():
        fast = forward(model, tokens, path="fast")
        assert fast_path(model).last.path == "fast"
        slow = forward(model, tokens, path="bridge")
        assert fast_path(model).last == fastpath.Choice(
            "bridge", "asked for the bridge (path='bridge')"
        )
        auto = forward(model, tokens)
    assert fast_path(model).last.path == "fast"
    assert torch.equal(fast, slow) and torch.equal(fast, auto)
    with pytest.raises(ValueError, match=r"accepted: \['auto', 'bridge', 'fast'\]"):
        forward(model, tokens, path="quick")
    with pytest.raises(ValueError, match="integer tensor"):
        forward(model, tokens.float())


def test_fast_path_refuses_loudly_where_it_cannot_run():
    model = load_model("tiny-gpt2")  # its bridge splits the fused QKV: other bits
    with pytest.raises(RuntimeError, match="cannot run"):
        forward(model, random_tokens(1, 4, seed=11), path="fast")
    assert "differ" in repr(fast_path(model))


@pytest.mark.parametrize("change", ["dtype", "assign"])
def test_the_tree_is_rebuilt_when_the_model_tensors_change(change):
    model = load_model("tiny-llama", seed=3)  # a fresh bridge of its own
    tokens = random_tokens(1, 6, seed=12)
    with torch.no_grad():
        forward(model, tokens, path="fast")
        before = fast_path(model).plain
        if change == "dtype":
            model.to(torch.bfloat16)
            model.to(torch.float64)
        else:  # new tensor objects, as loading other weights would give
            state = {k: v.clone() * 1.5 for k, v in model.original_model.state_dict().items()}
            model.original_model.load_state_dict(state, assign=True)
        fast = forward(model, tokens, path="fast")
        slow = forward(model, tokens, path="bridge")
    assert fast_path(model).plain is not before
    if change == "dtype":
        assert fast.dtype == torch.float64
    assert torch.equal(fast, slow)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="moving devices needs a GPU")
def test_the_tree_is_rebuilt_when_the_model_moves_device():
    model = load_model("tiny-llama", seed=4)
    tokens = random_tokens(1, 6, seed=13)
    with torch.no_grad():
        forward(model, tokens, path="fast")
        model.to("cuda")
        fast = forward(model, tokens.cuda(), path="fast")
        slow = forward(model, tokens.cuda(), path="bridge")
    assert fast.is_cuda and torch.equal(fast, slow)


def test_transformers_output_recorders_do_not_turn_the_fast_path_off():
    """TL's run_with_cache makes transformers install its output recorders (forward hooks
    that return None) on the HF modules; they stay for the process. They change nothing,
    so the fast path stays on, with the bridge's bits; any other hook still turns it off."""
    model = load_model("tiny-qwen2", seed=5)  # a private model: the recorders stay on it
    toks = random_tokens(1, 6, seed=3)
    with torch.no_grad():
        before = forward(model, toks)
        assert fast_path(model).last.path == "fast"
        model.run_with_cache(toks)
    recorders = [
        fn
        for m in model.modules()
        for fn in m._forward_hooks.values()
        if fastpath._output_recorder(fn)
    ]
    assert recorders, "run_with_cache installed no output recorders: the test tests nothing"
    with torch.no_grad():
        after = forward(model, toks)
    assert fast_path(model).last.path == "fast" and torch.equal(after, before)
    with torch.no_grad():
        assert torch.equal(forward(model, toks, path="bridge"), before)
    handle = model.original_model.model.layers[0].register_forward_hook(lambda *a: None)
    try:
        assert "hook is attached" in fast_path(model)._user_hooks()
    finally:
        handle.remove()
    assert fast_path(model)._user_hooks() is None
