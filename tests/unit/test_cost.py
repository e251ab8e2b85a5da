import pytest

from kvdirect_interp import H2O, FullKV, KVDirect, NoCache
from kvdirect_interp.cost import Arch, forward_flops, step_flops
from kvdirect_interp.policies import POLICIES
from tests.fixtures import tiny_model


def test_arch_from_models():
    llama = Arch.of(tiny_model("tiny-llama"))
    gpt2 = Arch.of(tiny_model("tiny-gpt2"))
    assert llama.gated_mlp and not gpt2.gated_mlp
    assert (llama.n_layers, llama.d_model, llama.n_heads, llama.n_kv_heads, llama.d_head) == (
        3,
        64,
        4,
        2,
        16,
    )
    # q, k, v, o: 64 x 16 x (2 x 4 + 2 x 2); gated MLP: 3 x 64 x 128
    assert llama.block_params == 64 * 16 * 12 + 3 * 64 * 128


def test_step_flops_order_the_policies():
    a = Arch(
        n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, d_head=64, d_mlp=1536, d_vocab=49152
    )
    ctx, window = 1024, 64
    full = step_flops(a, FullKV(), ctx)
    assert full == forward_flops(a, 1, ctx + 1)
    assert step_flops(a, H2O(window), ctx) < full  # attention over the budget only
    assert step_flops(a, KVDirect(window, checkpoint="min_bytes"), ctx) == full  # GQA: K/V kept
    every = step_flops(a, KVDirect(window), ctx)
    assert every - full == 2 * 30 * 576 * 2 * 3 * 64 * (ctx - window)
    token_ids = step_flops(a, KVDirect(window, checkpoint="token_ids"), ctx)
    assert token_ids > every  # a re-prefill
    assert step_flops(a, NoCache(), ctx) > token_ids


def test_only_computed_logits_pay_the_unembedding():
    # the runners ask for the last position's logits only (logits_to_keep=1): a replay of
    # the evicted tokens computes none, NoCache's forward of every token one
    a, ctx, window = SMOLLM2, 1024, 64
    unembed = 2 * a.d_model * a.d_vocab
    assert forward_flops(a, 10, 5) - forward_flops(a, 10, 5, logits=1) == 9 * unembed
    replay = KVDirect(window, checkpoint="token_ids").step_flops(a, ctx)
    evicted = ctx - window
    blocks = forward_flops(a, evicted, (evicted + 1) / 2) - evicted * unembed
    assert replay == FullKV().step_flops(a, ctx) + blocks
    assert NoCache().step_flops(a, ctx) == forward_flops(a, ctx + 1, (ctx + 2) / 2) - ctx * unembed
    with pytest.raises(ValueError, match=r"logits must be in 0..n_new = 0..3, got 4"):
        forward_flops(a, 3, 2, logits=4)


# ---- each policy owns its step formula ----

SMOLLM2 = Arch(
    n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, d_head=64, d_mlp=1536, d_vocab=49152
)
GEMMA3_4B = Arch(
    n_layers=34, d_model=2560, n_heads=8, n_kv_heads=4, d_head=256, d_mlp=10240, d_vocab=262208
)  # the paper's model, from its public config
WIDE_KV = Arch(
    n_layers=3,
    d_model=64,
    n_heads=4,
    n_kv_heads=4,
    d_head=16,
    d_mlp=256,
    d_vocab=259,
    gated_mlp=False,
)  # tiny-gpt2: K+V (128) wider than d_model


def _reference_step_flops(a: Arch, policy: str, context: int, budget: int) -> float:
    """cost.step_flops as it was before policies owned their formulas (the reference), with
    the unembedding counted only for the logits the runners compute (the last position's:
    none in a replay of evicted tokens, one in NoCache's forward of every token)."""
    evicted = max(0, context - budget)
    if policy == "FullKV":
        return forward_flops(a, 1, context + 1)
    if policy == "NoCache":
        return forward_flops(a, context + 1, (context + 2) / 2, logits=1)
    if policy.startswith("KVDirect"):
        mode = policy.split("[", 1)[1].rstrip("]")
        step = forward_flops(a, 1, context + 1)
        if mode in ("every_layer", "min_bytes"):
            if mode == "min_bytes" and 2 * a.n_kv_heads * a.d_head <= a.d_model:
                return step
            return step + 2 * a.n_layers * a.d_model * 2 * a.n_kv_heads * a.d_head * evicted
        return step + forward_flops(a, evicted, (evicted + 1) / 2, logits=0)
    return forward_flops(a, 1, min(context, budget) + 1)


@pytest.mark.parametrize(
    "arch", [SMOLLM2, GEMMA3_4B, WIDE_KV], ids=["smollm2", "gemma3-4b", "wide-kv"]
)
@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_step_flops_equal_the_reference_numbers(arch, name):
    for context, budget in [(0, 8), (5, 8), (8, 8), (1024, 64), (4096, 256)]:
        policy = POLICIES[name](budget)
        want = _reference_step_flops(arch, name, context, budget)
        assert policy.step_flops(arch, context) == want
        assert step_flops(arch, policy, context) == policy.step_flops(arch, context)


def test_step_flops_hand_numbers():
    ctx, window = 1024, 64
    # Gemma 3-4B: K+V (2 x 4 x 256 = 2048) <= d_model 2560, so min_bytes rebuilds nothing
    assert KVDirect(window, checkpoint="min_bytes").step_flops(
        GEMMA3_4B, ctx
    ) == FullKV().step_flops(GEMMA3_4B, ctx)
    every = KVDirect(window).step_flops(GEMMA3_4B, ctx)
    assert every - FullKV().step_flops(GEMMA3_4B, ctx) == 2 * 34 * 2560 * 2 * 4 * 256 * 960
    # tiny-gpt2's shape: min_bytes must rebuild, like every_layer
    assert (
        KVDirect(window, checkpoint="min_bytes").step_flops(WIDE_KV, ctx)
        == KVDirect(window).step_flops(WIDE_KV, ctx)
        > FullKV().step_flops(WIDE_KV, ctx)
    )
    assert NoCache().step_flops(SMOLLM2, 0) == FullKV().step_flops(SMOLLM2, 0)


def test_step_flops_takes_a_policy_object():
    # the name form ("H2O" with a budget) was deprecated, and dropped at 0.1.0
    with pytest.raises(TypeError, match="takes a policy object, got the name 'H2O'"):
        step_flops(SMOLLM2, "H2O", 10)
    assert step_flops(SMOLLM2, H2O(4), 10, 6) == H2O(4).step_flops(SMOLLM2, 10, prompt=6)
