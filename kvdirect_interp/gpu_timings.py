"""What gpu_check times, on whatever device the model is on (CUDA synchronised, CPU plain):
claim 6's three tiers for one configuration (`tier_row`) and one policy's decode speed and
peak memory (`decode_row`). Wall-clock: the numbers belong in results, with the machine."""

from __future__ import annotations

import math
import time

import torch

from .generation import generate, held_bytes
from .observers import PeakMemory
from .speed import _gpu_tier, _median_seconds, device_sync


@torch.no_grad()
def tier_row(model, layer: int, batch: int, n: int, repeats: int) -> dict:
    """Seconds of one configuration's three tiers, the model on its device: rebuild_s
    (residuals [batch, n, d_model] held there), device_read_s (K, V [batch, n_kv, n, d_head]
    copied within its memory), host_read_s (copied from pinned host memory; on a CPU, a
    copy within RAM; these two as `speed._gpu_tier` times them), and their ratios."""
    p = next(model.parameters())
    dev, cfg = p.device, model.cfg
    g = torch.Generator(device=dev).manual_seed(0)
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    resid = torch.randn(batch, n, cfg.d_model, generator=g, device=dev, dtype=p.dtype)
    k = torch.randn(batch, n_kv, n, cfg.d_head, generator=g, device=dev, dtype=p.dtype)
    v = torch.randn(k.shape, generator=g, device=dev, dtype=p.dtype)
    tier = _gpu_tier(model, layer, resid, k.cpu(), v.cpu(), repeats, dev)
    device_read = _median_seconds(lambda: (k.clone(), v.clone()), repeats, device_sync(dev))
    rebuild, host_read = tier["gpu_rebuild_s"], tier["h2d_read_s"]
    return {
        "batch": batch,
        "evicted_tokens": n,
        "layer": layer,
        "rebuild_s": rebuild,
        "device_read_s": device_read,
        "host_read_s": host_read,
        "rebuild_over_device_read": rebuild / device_read,
        "rebuild_over_host_read": rebuild / host_read,
    }


@torch.no_grad()
def decode_row(model, policy, prompt: torch.Tensor, short: int, long: int, arch) -> dict:
    """Decode speed and peak memory of `policy` after `prompt` [1, n]: a warm-up generation,
    then `short` and `long` new tokens, each timed from a synchronised start to a
    synchronised end; decode_tok_s = (long - short) / (difference of the two times).
    peak_bytes: the longer generation's peak, torch.cuda.max_memory_allocated on a GPU, the
    process's peak RSS (VmHWM, reset before it) on a CPU."""
    dev = next(model.parameters()).device
    cuda, before, sync = dev.type == "cuda", None, device_sync(dev)
    generate(model, prompt, max_new_tokens=2, cache=policy)  # allocation, dispatch: untimed
    # the generation's peak, reset once before it (an observer of every pass would add its
    # resets to the timed steps)
    peak_memory = PeakMemory()
    seconds = {}
    for n_new in (short, long):
        peak_memory.before()
        before = torch.cuda.memory_allocated(dev) if cuda else None
        if sync is not None:
            sync()
        start = time.perf_counter()
        g = generate(model, prompt, max_new_tokens=n_new, cache=policy)
        if sync is not None:
            sync()
        seconds[n_new] = time.perf_counter() - start
    steps = seconds[long] - seconds[short]
    measured = peak_memory.after(g.tokens)  # tokens on the model's device
    if cuda:
        peak, what = measured["cuda_max_allocated_bytes"], "cuda max_memory_allocated"
    else:
        peak, what = measured["peak_rss_bytes"], "peak RSS (VmHWM)"
    n = prompt.shape[1]
    return {
        "policy": policy.name,
        "context": n,
        "new_tokens": long,
        "decode_tok_s": (long - short) / steps if steps > 0 else math.nan,
        "end_to_end_tok_s": long / seconds[long],
        "generate_s": seconds[long],
        "peak_bytes": peak,
        "peak_what": what,
        "allocated_before_bytes": before,  # the weights and what else was held
        "bytes_held": held_bytes(g.memory[-1]),
        "rebuilt_bytes_max": max(r["rebuilt_bytes"] for r in g.memory),
        "gflops_per_step": policy.step_flops(arch, n + long - 2, prompt=n) / 1e9,
    }
