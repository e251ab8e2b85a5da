"""This machine's measured peaks, for the roofline (`roofline.Device.measured`): GEMM
FLOP/s, the bandwidth of a large copy within the device's memory and, on a GPU, of a copy
from pinned host memory. Wall-clock, so run them with nothing else on the machine; the
numbers belong in results, with the machine that made them."""

from __future__ import annotations

import torch

from .roofline import Device
from .speed import _median_seconds, device_sync


@torch.no_grad()
def gemm_flops(
    device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5
) -> float:
    """FLOP/s of an [n, n] x [n, n] matmul (2 n^3 FLOPs), median of `repeats` calls."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=dev, dtype=dtype)
    b = torch.randn(n, n, generator=g, device=dev, dtype=dtype)
    return 2 * n**3 / _median_seconds(lambda: a @ b, repeats, device_sync(dev))


@torch.no_grad()
def copy_bandwidth(device: str = "cpu", n_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes/s moved by a copy of `n_bytes` within the device's memory, counting the bytes
    read and the bytes written (2 * n_bytes per copy): the roofline's memory bandwidth."""
    dev = torch.device(device)
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _median_seconds(lambda: dst.copy_(src), repeats, device_sync(dev))


@torch.no_grad()
def host_to_device_bandwidth(
    device: str = "cuda", n_bytes: int = 256 * 2**20, repeats: int = 5
) -> float:
    """Bytes/s of a copy from pinned host memory into a CUDA device (what an offloading
    cache does to fetch K/V)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"host_to_device_bandwidth needs a CUDA device, got {device!r}")
    src = torch.ones(n_bytes // 4, dtype=torch.float32).pin_memory()
    dst = torch.empty(src.shape, dtype=src.dtype, device=dev)
    return (
        src.numel()
        * 4
        / _median_seconds(lambda: dst.copy_(src, non_blocking=True), repeats, device_sync(dev))
    )


def measure(
    device: str = "cpu", dtype: torch.dtype = torch.float32, *, quick: bool = False
) -> tuple[Device, dict]:
    """(roofline Device from this machine's measured peaks, the measurements as a dict).
    quick: small sizes (a smoke run; small copies may fit in cache and read high)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if quick:
        n, n_bytes, repeats = 512, 32 * 2**20, 3
    else:  # a GPU needs a larger GEMM to reach its peak
        n, n_bytes, repeats = (8192, 2**30, 5) if cuda else (2048, 256 * 2**20, 5)
    flops = gemm_flops(device, dtype, n, repeats)
    bw = copy_bandwidth(device, n_bytes, repeats)
    link = host_to_device_bandwidth(device, n_bytes, repeats) if cuda else None
    name = torch.cuda.get_device_name(dev) if cuda else f"this CPU ({device})"
    how = (
        f"measured here: {n}x{n} {str(dtype).removeprefix('torch.')} matmul; "
        f"{n_bytes / 2**20:.0f} MiB copies; median of {repeats}"
    )
    measured = {
        "gemm_flops": flops,
        "gemm_n": n,
        "gemm_dtype": str(dtype).removeprefix("torch."),
        "copy_bandwidth": bw,
        "copy_bytes": n_bytes,
        "host_to_device_bandwidth": link,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
    }
    dtype_name = str(dtype).removeprefix("torch.")
    return Device.measured(name, flops, bw, link, dtype_name, how), measured
