"""A roofline model of claim 6: predicted time to rebuild K/V against predicted time to read
them, on a device given by its peak compute and bandwidths. Predicted, never measured.

An operation takes max(FLOPs / peak FLOP/s, bytes / bandwidth) (Williams, Waterman and
Patterson, "Roofline", CACM 52(4), 2009): a lower bound that real kernels approach but do
not reach. Devices come from published specifications (data/devices.json, every number with
its source: `load_devices`) or from a machine's measured peaks (`Device.measured`).

B sequences, N evicted tokens each, e bytes per element, per mode (the policies' terms):
  every_layer  per layer: FLOPs `cost.rebuild_flops` (k and v projections of B*N tokens);
               bytes W_k + W_v + residuals read (d_model) + K/V written (2 n_kv d_head)
  first_layer, token_ids
               every layer: the re-prefill the policies count in `step_flops`
               (B * cost.forward_flops(N tokens, (N + 1) / 2 keys each)); bytes every block's
               weights + the checkpoints read + every layer's K/V written
Each read moves the same K/V (per layer, or every layer for the replay modes) to where
attention reads them:
  device_memory  a copy within the device's memory: read and written, 2 * K/V bytes / bandwidth
  pinned_host    pinned host memory over the host link (PCIe): K/V bytes / link bandwidth
  nvme           an NVMe read, through the host link: K/V bytes / min(NVMe, link)
Bytes are the least traffic (no intermediate written twice: norms, rotary and activations
between layers are not counted), so predicted times are lower bounds on both sides; the
sliding windows are not used (every layer rebuilds or reads every evicted token, as `cost`
counts them). rebuild_ckpt_in_tier_s is the rebuild when the checkpoints are kept in the
read's tier too and must cross it first (pipelined): where a residual is larger than the
K/V it replaces (grouped-query attention: d_model > 2 n_kv d_head), that can never win.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .cost import Arch, forward_flops, rebuild_flops
from .memory import TOKEN_ID_BYTES, Shape, kv_bytes_per_token, residual_bytes_per_token

DEVICES_FILE = Path(__file__).parent / "data" / "devices.json"
MODES = ("every_layer", "first_layer", "token_ids")
TIERS = ("device_memory", "pinned_host", "nvme")
PAPER_SPEEDUP = 5.0  # claim 6: "up to 5x faster than reading"
PREDICTED = "predicted (roofline)"


@dataclass(frozen=True)
class Device:
    """Peaks of one device. flops: FLOP/s at the dtype predicted (bf16 tensor cores on the
    GPUs, dense); bandwidths in bytes/s: memory_bandwidth of its own memory, link_bandwidth
    of host -> device copies (None: no host link, e.g. a CPU), storage_bandwidth of an NVMe
    read (None: not modelled). sources: each number's citation (document and URL) or how it
    was measured."""

    name: str
    flops: float
    memory_bandwidth: float
    link_bandwidth: float | None = None
    storage_bandwidth: float | None = None
    dtype: str = "bfloat16"
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("flops", "memory_bandwidth", "link_bandwidth", "storage_bandwidth"):
            value = getattr(self, key)
            if value is None and key in ("link_bandwidth", "storage_bandwidth"):
                continue
            if not isinstance(value, int | float) or not value > 0 or math.isinf(value):
                raise ValueError(f"Device {self.name!r}: {key} must be a number > 0, got {value!r}")

    @classmethod
    def measured(
        cls,
        name: str,
        flops: float,
        memory_bandwidth: float,
        link_bandwidth: float | None = None,
        dtype: str = "float32",
        how: str = "measured",
    ) -> Device:
        """A device from this machine's measured peaks (e.g. kvdirect_interp.peaks)."""
        keys = ("flops", "memory_bandwidth") + (("link_bandwidth",) if link_bandwidth else ())
        return cls(
            name, flops, memory_bandwidth, link_bandwidth, None, dtype, {k: how for k in keys}
        )

    def time(self, flops: float, bytes_: float, bandwidth: float | None = None) -> float:
        """Roofline seconds of work of `flops` streaming `bytes_` through `bandwidth`
        (default: the device's memory)."""
        bw = self.memory_bandwidth if bandwidth is None else bandwidth
        return max(flops / self.flops, bytes_ / bw)


def _number(where: str, entry) -> tuple[float, str]:
    """(value, "document <url>") of a cited number; refuses one without its citation."""
    source = entry.get("source") if isinstance(entry, dict) else None
    doc = source.get("document") if isinstance(source, dict) else None
    url = source.get("url") if isinstance(source, dict) else None
    cited = isinstance(doc, str) and doc.strip() and isinstance(url, str)
    if not (cited and url.startswith("http")):
        raise ValueError(
            f"devices file: {where} is missing or has no citation; every number needs "
            '"source": {"document": <name>, "url": <http(s) URL>}'
        )
    value = entry.get("value")
    if not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"devices file: {where}.value must be a number > 0, got {value!r}")
    return float(value), f"{doc} <{url}>"


def load_devices(
    path: str | Path = DEVICES_FILE, dtype: str = "bf16", storage: str = "NVMe Gen4"
) -> dict[str, Device]:
    """Every device of the devices file, by name, each with its host link and `storage`
    (a key of the file's "storage"); dtype "bf16" or "fp32" picks the peak compute. Every
    number in the file must carry its citation, used or not."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"unknown dtype {dtype!r}; accepted: ['bf16', 'fp32']")
    links, stores = data.get("links", {}), data.get("storage", {})
    if storage not in stores:
        raise ValueError(f"devices file: unknown storage {storage!r}; accepted: {list(stores)}")
    for group, entries in (("links", links), ("storage", stores)):
        for key, entry in entries.items():
            _number(f"{group}.{key}", entry)
    nvme, nvme_src = _number(f"storage.{storage}", stores[storage])
    out = {}
    for name, d in data.get("devices", {}).items():
        flops, flops_src = _number(f"{name}.{dtype}_flops", d.get(f"{dtype}_flops"))
        bw, bw_src = _number(f"{name}.memory_bandwidth", d.get("memory_bandwidth"))
        if d.get("host_link") not in links:
            raise ValueError(
                f"devices file: {name}.host_link {d.get('host_link')!r} is not one of the "
                f"links {list(links)}"
            )
        link, link_src = _number(f"links.{d['host_link']}", links[d["host_link"]])
        for other in ("bf16_flops", "fp32_flops"):  # the peak not picked is checked too
            _number(f"{name}.{other}", d.get(other))
        out[name] = Device(
            name,
            flops,
            bw,
            link_bandwidth=link,
            storage_bandwidth=nvme,
            dtype="bfloat16" if dtype == "bf16" else "float32",
            sources=dict(
                flops=flops_src,
                memory_bandwidth=bw_src,
                link_bandwidth=link_src,
                storage_bandwidth=nvme_src,
            ),
        )
    return out


def device_for(gpu_name: str, path: str | Path = DEVICES_FILE) -> Device | None:
    """The devices-file entry whose "match" strings appear in a CUDA device's name (e.g.
    "NVIDIA H100 80GB HBM3" -> H100 SXM), or None when none does."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    for name, d in data.get("devices", {}).items():
        if any(m.lower() in gpu_name.lower() for m in d.get("match", [])):
            return load_devices(path)[name]
    return None


# --- the two sides, one configuration each


def rebuild_cost(a: Arch, s: Shape, mode: str, batch: int, n: int) -> dict[str, float]:
    """FLOPs, bytes and checkpoint bytes of rebuilding B=batch x N=n evicted tokens' K/V
    under `mode`, and the K/V bytes the rebuild replaces (`kv_bytes`): one layer for
    every_layer, every layer for the replay modes (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; accepted: {list(MODES)}")
    _positive(batch=batch, evicted_tokens=n)
    e, tokens = s.bytes_per_element, batch * n
    if mode == "every_layer":
        one = Shape(s.name, 1, s.d_model, s.n_kv_heads, s.d_head, e)
        kv, ckpt = kv_bytes_per_token(one) * tokens, residual_bytes_per_token(one) * tokens
        weights = 2 * a.d_model * a.n_kv_heads * a.d_head * e
        flops = rebuild_flops(a, tokens, n_layers=1)
        layers = 1
    else:
        kv = kv_bytes_per_token(s) * tokens
        ids = mode == "token_ids"
        ckpt = tokens * (TOKEN_ID_BYTES if ids else residual_bytes_per_token(s, 1))
        weights = a.block_params * a.n_layers * e
        if ids:  # the ids' embedding rows are read too: d_model each, like a residual
            weights += tokens * a.d_model * e
        flops = batch * forward_flops(a, n, (n + 1) / 2, logits=0)
        layers = a.n_layers
    return {
        "layers": layers,
        "flops": flops,
        "rebuild_bytes": weights + ckpt + kv,
        "checkpoint_bytes": ckpt,
        "kv_bytes": kv,
    }


def read_seconds(d: Device, kv_bytes: float, tier: str) -> float:
    """Seconds to bring `kv_bytes` of K/V to where attention reads them, from `tier`; NaN
    where the device has no such tier (a CPU has no host link)."""
    if tier == "device_memory":
        return 2 * kv_bytes / d.memory_bandwidth  # a copy: read and written
    link = d.link_bandwidth
    if tier == "pinned_host":
        return kv_bytes / link if link else math.nan
    if tier == "nvme":
        bw = min(b for b in (d.storage_bandwidth, link) if b) if d.storage_bandwidth else None
        return kv_bytes / bw if bw else math.nan
    raise ValueError(f"unknown tier {tier!r}; accepted: {list(TIERS)}")


def _tier_bandwidth(d: Device, tier: str) -> float:
    """Bytes/s through which a checkpoint kept in `tier` reaches the device."""
    if tier == "device_memory":
        return d.memory_bandwidth
    if tier == "pinned_host":
        return d.link_bandwidth or math.nan
    return min(b for b in (d.storage_bandwidth, d.link_bandwidth) if b)


def _positive(**values) -> None:
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {v!r}")


def predict(
    devices: Iterable[Device],
    models: Mapping[str, tuple[Arch, Shape]],
    *,
    modes: Iterable[str] = MODES,
    tiers: Iterable[str] = TIERS,
    batches: Iterable[int] = (1, 4, 16, 64),
    n_tokens: Iterable[int] = (64, 256, 1024, 4096),
) -> pd.DataFrame:
    """One row per device x model x mode x tier x batch x N: the roofline's rebuild_s
    (with its bound: "compute" or "memory") and read_s, rebuild_over_read, speedup
    (read_s / rebuild_s: > 1 where recomputing wins), rebuild_ckpt_in_tier_s, the FLOPs
    and bytes behind them, and source = "predicted (roofline)". Tiers a device lacks are
    left out."""
    rows = []
    for d in devices:
        for model, (a, s) in models.items():
            for mode in modes:
                for b in batches:
                    for n in n_tokens:
                        cost = rebuild_cost(a, s, mode, b, n)
                        compute = cost["flops"] / d.flops
                        memory = cost["rebuild_bytes"] / d.memory_bandwidth
                        rebuild = max(compute, memory)
                        for tier in tiers:
                            read = read_seconds(d, cost["kv_bytes"], tier)
                            if math.isnan(read):
                                continue
                            ckpt_move = cost["checkpoint_bytes"] / _tier_bandwidth(d, tier)
                            rows.append(
                                {
                                    "device": d.name,
                                    "model": model,
                                    "mode": mode,
                                    "tier": tier,
                                    "batch": b,
                                    "evicted_tokens": n,
                                    **cost,
                                    "rebuild_s": rebuild,
                                    "bound": "compute" if compute >= memory else "memory",
                                    "read_s": read,
                                    "rebuild_over_read": rebuild / read,
                                    "speedup": read / rebuild,
                                    "rebuild_ckpt_in_tier_s": max(rebuild, ckpt_move),
                                    "source": PREDICTED,
                                }
                            )
    return pd.DataFrame(rows)


def where_recompute_wins(pred: pd.DataFrame) -> pd.DataFrame:
    """Per device x model x mode x tier, from `predict`'s rows: how many configurations
    recomputing wins (speedup > 1) out of how many, the best speedup and best_from: the
    smallest B*N (then batch) within 1 % of it (compute-bound configurations share one
    speedup, so the best is a plateau, not a point), the smallest B*N tokens at which it
    wins, whether the best reaches the paper's 5x, the bound of the rebuild there, whether
    it still wins with the checkpoints kept in the same tier (best_ckpt_in_tier_speedup),
    and the checkpoint bytes over the K/V bytes (ckpt_over_kv: > 1 means the checkpoint is
    larger than what it replaces)."""
    rows = []
    for key, g in pred.groupby(["device", "model", "mode", "tier"], sort=False):
        g = g.assign(tokens=g.batch * g.evicted_tokens).sort_values(["tokens", "batch"])
        best = g[g.speedup >= 0.99 * g.speedup.max()].iloc[0]
        wins = g[g.speedup > 1]
        rows.append(
            {
                **dict(zip(("device", "model", "mode", "tier"), key, strict=True)),
                "wins": f"{len(wins)}/{len(g)}",
                "best_speedup": float(g.speedup.max()),
                "best_from": f"batch {int(best.batch)}, N {int(best.evicted_tokens)}",
                "wins_from_tokens": int(wins.tokens.min()) if len(wins) else None,
                "reaches_5x": bool(best.speedup >= PAPER_SPEEDUP),
                "bound_at_best": best.bound,
                "best_ckpt_in_tier_speedup": float((g.read_s / g.rebuild_ckpt_in_tier_s).max()),
                "ckpt_over_kv": float(best.checkpoint_bytes / best.kv_bytes),
                "source": PREDICTED,
            }
        )
    return pd.DataFrame(rows)


def predicted_claim6(pred: pd.DataFrame) -> pd.DataFrame:
    """Claim 6 on predicted tiers, kept apart from the measured verdict
    (`verdicts.claim6`): per device x model x mode x tier, "reaches 5x" where the best
    predicted speedup is >= 5, "faster, short of 5x" where it is > 1, else "never faster".
    Every row says it is predicted."""
    summary = where_recompute_wins(pred)
    status = [
        "reaches 5x" if s >= PAPER_SPEEDUP else "faster, short of 5x" if s > 1 else "never faster"
        for s in summary.best_speedup
    ]
    cols = ["device", "model", "mode", "tier", "best_speedup", "best_from"]
    return summary[cols].assign(predicted=status, source=PREDICTED)


def weight_bytes(a: Arch, bytes_per_element: int) -> int:
    """Bytes of every block's weights and the unembedding: what one decode step streams."""
    return (a.block_params * a.n_layers + a.d_model * a.d_vocab) * bytes_per_element


def decode_step_seconds(
    d: Device, a: Arch, flops: float, held_bytes: float, rebuilt_bytes: float, e: int
) -> float:
    """Roofline seconds of one decode step of `flops` (the policy's `step_flops`) that
    streams the weights, every held byte (K/V read by attention, checkpoints read to
    rebuild) and the rebuilt K/V (written, then read)."""
    return d.time(flops, weight_bytes(a, e) + held_bytes + 2 * rebuilt_bytes)
