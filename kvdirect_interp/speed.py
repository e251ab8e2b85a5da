"""Claim 6's timings: rebuilding K/V against reading them from where a system would keep
them (`rebuild_vs_read`), and what each policy's decode costs end to end (`decode_speed`;
every policy in turns, side by side: `decode_side_by_side`). Every timing is wall-clock on
this process's machine: take them with nothing else running (the study runs claim 6
first, alone)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from tqdm.auto import tqdm

from .cost import Arch
from .generation import HELD_KINDS, generate, held_bytes
from .kv import rebuild_kv
from .policies import CachePolicy

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def device_sync(device: torch.device):
    """What makes a timing cover a device's queued work, for `_median_seconds`' `sync`:
    torch.cuda.synchronize on a GPU, None elsewhere (CPU work is done when it returns)."""
    return torch.cuda.synchronize if device.type == "cuda" else None


def _median_seconds(fn, repeats: int, sync=None) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` calls after one warm-up call.
    `sync` (torch.cuda.synchronize for GPU work) runs before each start and before each
    stop, so the time covers the device's work, not only its launch."""
    fn()  # warm-up: first calls pay allocation and dispatch costs
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _fs_type(path: Path) -> str:
    """The filesystem type holding `path` (from /proc/mounts; "unknown" elsewhere): a read
    from tmpfs is a RAM read whatever the page cache does."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    real = str(path.resolve())
    best = max(
        (m for m in mounts if real == m[0] or real.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return best[1] if best else "unknown"


def _disk_read_seconds(folder: Path, tensors: Sequence[torch.Tensor], repeats: int) -> float:
    """Median seconds to read `tensors`' bytes back from a file in `folder` into memory, the
    page cache dropped before every read (fsync, then posix_fadvise(POSIX_FADV_DONTNEED):
    clean pages leave the cache, so the read goes to the device)."""
    blob = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in tensors)
    fd, name = tempfile.mkstemp(dir=folder, prefix="kv-read-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        buf = bytearray(len(blob))
        times = []
        for _ in range(repeats + 1):  # the first read is a warm-up (open and dispatch costs)
            with open(name, "rb", buffering=0) as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                start = time.perf_counter()
                f.readinto(buf)
                torch.frombuffer(buf, dtype=torch.uint8)  # the bytes as a tensor, no copy
                times.append(time.perf_counter() - start)
        times = times[1:]
        return sorted(times)[len(times) // 2]
    finally:
        os.unlink(name)


def _inputs(cfg, dtype: torch.dtype, b: int, n: int):
    """Random residuals [b, n, d_model] and K, V [b, n_kv, n, d_head] for one configuration
    (seeded: the GPU tier times the same tensors as the CPU tiers)."""
    g = torch.Generator().manual_seed(0)
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    resid = torch.randn(b, n, cfg.d_model, dtype=dtype, generator=g)
    k = torch.randn(b, n_kv, n, cfg.d_head, dtype=dtype, generator=g)
    return resid, k, torch.randn(k.shape, dtype=dtype, generator=g)


def _gpu_tier(
    model: TransformerBridge, layer: int, resid, k, v, repeats: int, device: str = "cuda"
) -> dict:
    """The GPU tier of one configuration, `model` already on `device`: the rebuild from
    residuals held on the GPU (checkpoints are small, so they stay there) vs reading the
    K/V from pinned host memory into the GPU, the way an offloading cache fetches them.
    (`device` "cpu" runs the same steps unpinned and unsynchronised: what the tests run
    on a machine without a GPU.)"""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = device_sync(dev)
    resid_dev = resid.to(dev)
    k_host, v_host = (k.pin_memory(), v.pin_memory()) if cuda else (k, v)
    t_rebuild = _median_seconds(lambda: rebuild_kv(model, resid_dev, layer), repeats, sync)
    # copy=True: on the CPU, .to(its own device) would return the tensor and time nothing
    t_h2d = _median_seconds(
        lambda: (
            k_host.to(dev, non_blocking=True, copy=True),
            v_host.to(dev, non_blocking=True, copy=True),
        ),
        repeats,
        sync,
    )
    return {
        "gpu_rebuild_s": t_rebuild,
        "h2d_read_s": t_h2d,
        "gpu_rebuild_over_h2d_read": t_rebuild / t_h2d,
        "gpu": torch.cuda.get_device_name(dev) if cuda else str(dev),
    }


def _add_gpu_tier(model, rows, configs, layer: int, repeats: int, device: str = "cuda"):
    """Each row of `rows` (one per (batch, N) of `configs`) gets its GPU tier; the model
    is moved to `device` for it and back where it was, even if a timing fails."""
    home = next(model.parameters()).device
    cfg, dtype = model.cfg, next(model.parameters()).dtype
    model.to(device)
    try:
        for row, (b, n) in zip(rows, configs, strict=True):
            row |= _gpu_tier(model, layer, *_inputs(cfg, dtype, b, n), repeats, device)
    finally:
        model.to(home)


@torch.no_grad()
def rebuild_vs_read(
    model: TransformerBridge,
    *,
    layer: int = 0,
    n_tokens: Sequence[int] = (64, 256, 1024),
    batch_sizes: Sequence[int] = (1, 4),
    repeats: int = 5,
    disk_dir: str | Path | None = None,
    gpu: bool | None = None,
) -> pd.DataFrame:
    """Per operation, side by side in one run: rebuilding one layer's K/V for N evicted
    tokens from their residuals (norm, projections, rotary) vs reading N tokens' cached
    K/V (a copy of the held tensors, what a cache step moves). Residuals are random: the
    cost does not depend on the values. The model stays where it is (the CPU for the
    packaged models).

    disk_dir: also read the K/V ([batch, n_kv, N, d_head] each) from a file in that folder
    with the page cache dropped first (`_disk_read_seconds`); adds disk_read_s,
    rebuild_over_disk_read, disk_fs (the folder's filesystem: "tmpfs" means RAM) and
    disk_cache (how the cache was dropped).

    gpu: also time the GPU tier (`_gpu_tier`): the model is moved to the GPU for it, after
    the other tiers, and moved back; adds gpu_rebuild_s, h2d_read_s (pinned host memory to
    the GPU), gpu_rebuild_over_h2d_read and gpu (the device's name). None: where
    torch.cuda.is_available(); True without a CUDA device is an error."""
    if gpu is None:
        gpu = torch.cuda.is_available()
    elif gpu and not torch.cuda.is_available():
        raise ValueError(
            "gpu=True needs a CUDA device, and torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); pass gpu=False or None (auto)"
        )
    cfg = model.cfg
    dtype = next(model.parameters()).dtype
    configs = [(b, n) for b in batch_sizes for n in n_tokens]
    rows = []
    for b, n in configs:
        resid, k, v = _inputs(cfg, dtype, b, n)
        t_rebuild = _median_seconds(lambda r=resid: rebuild_kv(model, r, layer), repeats)
        t_read = _median_seconds(lambda k=k, v=v: (k.clone(), v.clone()), repeats)
        rows.append(
            {
                "batch": b,
                "evicted_tokens": n,
                "rebuild_s": t_rebuild,
                "read_s": t_read,
                "rebuild_over_read": t_rebuild / t_read,
            }
        )
        if disk_dir is not None:
            t_disk = _disk_read_seconds(Path(disk_dir), (k, v), repeats)
            rows[-1] |= {
                "disk_read_s": t_disk,
                "rebuild_over_disk_read": t_rebuild / t_disk,
                "disk_fs": _fs_type(Path(disk_dir)),
                "disk_cache": "dropped: fsync + posix_fadvise(POSIX_FADV_DONTNEED) per read",
            }
    if gpu:
        _add_gpu_tier(model, rows, configs, layer, repeats)
    return pd.DataFrame(rows)


def _warm_up(model: TransformerBridge, policy: CachePolicy, prompt: torch.Tensor) -> None:
    """One untimed 2-token generation: a process's first passes at a shape pay allocation
    and dispatch (without it the first unit of a process measured a prefill 3x slower)."""
    generate(model, prompt, max_new_tokens=2, cache=policy)


@torch.no_grad()
def decode_speed(
    model: TransformerBridge,
    policy: CachePolicy,
    prompt: torch.Tensor,
    *,
    new_tokens: int = 16,
    warmup: bool = True,
) -> dict:
    """One greedy generation of `new_tokens` after `prompt` [1, n] under `policy`,
    timed per forward pass (generate's memory records): prefill_s (the prompt's pass),
    decode_step_s (median over the new_tokens - 1 decode steps), decode_tok_s (1 / that),
    end_to_end_tok_s (new tokens over the whole call, prefill included), bytes held by
    kind at the end, and GFLOPs per decode step by the policy's own formula at the last
    step's context. `warmup`: one untimed 2-token generation first, on the same prompt and
    policy (`_warm_up`)."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (one decode step at least), got {new_tokens}")
    if warmup:
        _warm_up(model, policy, prompt)
    g = generate(model, prompt, max_new_tokens=new_tokens, cache=policy)
    steps = sorted(r["seconds"] for r in g.memory[1:])
    step = steps[len(steps) // 2]
    last = g.memory[-1]
    n = prompt.shape[1]
    return {
        "policy": policy.name,
        "prompt_tokens": n,
        "context": n + new_tokens,  # the tokens the run ends with
        "new_tokens": new_tokens,
        "prefill_s": g.memory[0]["seconds"],
        "decode_step_s": step,
        "decode_tok_s": 1 / step,
        "end_to_end_tok_s": new_tokens / g.seconds,
        "bytes_held": held_bytes(last),
        **{k: last.get(k) or 0 for k in HELD_KINDS},
        "rebuilt_bytes_max": max(r["rebuilt_bytes"] for r in g.memory),
        # the last decode step: n + new_tokens - 2 tokens seen before the one it feeds
        "gflops_per_step": policy.step_flops(Arch.of(model), n + new_tokens - 2, prompt=n) / 1e9,
    }


# the timings of a decode_speed row, taken as medians over rounds by decode_side_by_side
TIMED = ("prefill_s", "decode_step_s", "end_to_end_tok_s")


@torch.no_grad()
def decode_side_by_side(
    model: TransformerBridge,
    policies: Sequence[CachePolicy],
    prompt: torch.Tensor,
    *,
    new_tokens: int = 16,
    rounds: int = 3,
    progress: bool = False,
) -> pd.DataFrame:
    """Every policy's `decode_speed` after `prompt` [1, n], measured in turns (A B C, A B C,
    ...) for `rounds` rounds after one untimed warm-up generation each, so a change in the
    machine's load hits every policy alike and their ratios are measured side by side. One
    row per policy: decode_speed's columns with each timing the median over the rounds
    (decode_tok_s = 1 / that median step), decode_tok_s_min / _max over the rounds, and
    vs_first_min / _max: the range of its decode step rate over the first policy's within
    the same round (the side-by-side ratio, e.g. against FullKV)."""
    if rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"each policy once: got {names}")
    for policy in policies:
        _warm_up(model, policy, prompt)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    turns = [(r, p) for r in range(rounds) for p in policies]
    for _, policy in tqdm(turns, desc="decode side by side", disable=not progress, leave=False):
        runs[policy.name].append(
            decode_speed(model, policy, prompt, new_tokens=new_tokens, warmup=False)
        )
    first = [r["decode_step_s"] for r in runs[names[0]]]
    rows = []
    for name in names:
        df = pd.DataFrame(runs[name])
        step = float(df.decode_step_s.median())
        vs_first = [f / s for f, s in zip(first, df.decode_step_s, strict=True)]
        rows.append(
            {
                **runs[name][0],
                **{k: float(df[k].median()) for k in TIMED},
                "decode_tok_s": 1 / step,
                "decode_tok_s_min": float((1 / df.decode_step_s).min()),
                "decode_tok_s_max": float((1 / df.decode_step_s).max()),
                "vs_first_min": min(vs_first),
                "vs_first_max": max(vs_first),
                "rounds": rounds,
            }
        )
    return pd.DataFrame(rows)
