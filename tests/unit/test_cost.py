from kvdirect_interp.cost import Arch, forward_flops, step_flops
from tests.conftest import tiny_model


def test_arch_from_models():
    llama = Arch.of(tiny_model("tiny-llama"))
    gpt2 = Arch.of(tiny_model("tiny-gpt2"))
    assert llama.gated_mlp and not gpt2.gated_mlp
    assert (llama.n_layers, llama.d_model, llama.n_heads, llama.n_kv_heads, llama.d_head) == (3, 64, 4, 2, 16)
    # q, k, v, o: 64 x 16 x (2 x 4 + 2 x 2); gated MLP: 3 x 64 x 128
    assert llama.block_params == 64 * 16 * 12 + 3 * 64 * 128


def test_step_flops_order_the_policies():
    a = Arch(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, d_head=64, d_mlp=1536,
             d_vocab=49152)
    ctx, window = 1024, 64
    full = step_flops(a, "FullKV", ctx, window)
    assert full == forward_flops(a, 1, ctx + 1)
    assert step_flops(a, "H2O", ctx, window) < full  # attention over the budget only
    assert step_flops(a, "KVDirect:min_bytes", ctx, window) == full  # GQA: K/V kept
    every = step_flops(a, "KVDirect:every_layer", ctx, window)
    assert every - full == 2 * 30 * 576 * 2 * 3 * 64 * (ctx - window)
    assert step_flops(a, "KVDirect:token_ids", ctx, window) > every  # a re-prefill
    assert step_flops(a, "NoCache", ctx, window) > step_flops(a, "KVDirect:token_ids", ctx, window)
