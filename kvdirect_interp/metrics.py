"""Exact comparisons: KL divergence in float64, token match, ULP distance; bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_same_shape

_INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """D_KL(P || Q) per position, in float64 from log-softmax.

    p_logits, q_logits: [..., vocab] of equal shape -> [...] (nats). Exactly 0.0 wherever the
    two logit rows are equal, because both log-softmaxes are then the same float64 numbers.
    """
    return kl_with_grad(p_logits.detach(), q_logits.detach())


def kl_with_grad(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """`kl_divergence` without detaching its inputs: differentiable (attribution patching)."""
    check_same_shape(p_logits, q_logits, "p_logits", "q_logits")
    log_p = torch.log_softmax(p_logits.to(torch.float64), dim=-1)
    log_q = torch.log_softmax(q_logits.to(torch.float64), dim=-1)
    # p * (log p - log q), with 0 * anything = 0 where p underflows to 0.
    terms = torch.where(log_p.isneginf(), torch.zeros_like(log_p), log_p.exp() * (log_p - log_q))
    return terms.sum(dim=-1)


@dataclass(frozen=True)
class TokenMatch:
    fraction: float  # share of positions where the tokens agree
    common_prefix: int  # tokens equal from the start up to the first difference
    n: int  # positions compared

    @property
    def first_divergence(self) -> int | None:
        return None if self.common_prefix == self.n else self.common_prefix


def token_match(a, b) -> TokenMatch:
    """Compare two token sequences of equal length (1-D tensors or lists of ints)."""
    a = torch.as_tensor(a).reshape(-1)
    b = torch.as_tensor(b).reshape(-1)
    if a.numel() != b.numel():
        raise ValueError(
            f"token sequences differ in length: {a.numel()} vs {b.numel()}; "
            "compare sequences of equal length (slice the longer one explicitly)"
        )
    if a.numel() == 0:
        raise ValueError("token sequences are empty; nothing to compare")
    equal = a == b
    mismatches = (~equal).nonzero()
    prefix = int(mismatches[0]) if len(mismatches) else a.numel()
    return TokenMatch(float(equal.double().mean()), prefix, a.numel())


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise distance in units in the last place (0 where bitwise equal), as int64.

    Floats are mapped to integers that are monotonic in the float order, so the difference
    counts the representable numbers between a and b (+0.0 and -0.0 are 0 apart).
    """
    check_same_shape(a, b, "a", "b")
    if a.dtype != b.dtype or a.dtype not in _INT_VIEW:
        raise ValueError(
            f"ulp_distance needs two tensors of one float dtype among "
            f"{list(_INT_VIEW)}; got {a.dtype} and {b.dtype}"
        )

    def ordered(x: torch.Tensor) -> torch.Tensor:
        bits = x.detach().contiguous().view(_INT_VIEW[x.dtype]).to(torch.int64)
        sign_bit = 1 << (torch.finfo(x.dtype).bits - 1)
        # negative floats: flip so more negative -> smaller integer
        return torch.where(bits < 0, -(bits + sign_bit), bits)

    return (ordered(a) - ordered(b)).abs()


def bootstrap_ci(
    values, *, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` [n] and its percentile bootstrap interval at
    `level` (resampling the n values with replacement, `n_resamples` times, seeded).

    One value has no interval: (mean, nan, nan). NaN values are refused, not skipped."""
    means = bootstrap_means(np.asarray(values, dtype=np.float64)[None], n_resamples, seed)
    mean = float(np.mean(values))
    low, high = percentile_interval(means, level)
    return mean, float(low[0]), float(high[0])


def bootstrap_means(values: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """values [groups, n] -> resampled means [groups, n_resamples]: every group resampled
    with the same index draws (one seeded generator), so intervals are reproducible."""
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"values must be [groups, n] with n >= 1, got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("values hold NaN; drop or explain them before a bootstrap")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    n = values.shape[1]
    if n == 1:
        return np.full((values.shape[0], n_resamples), np.nan)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    out = np.empty((values.shape[0], n_resamples))
    step = max(1, 2**24 // (n * n_resamples))  # bound the [step, resamples, n] gather
    for i in range(0, values.shape[0], step):
        out[i : i + step] = values[i : i + step][:, draws].mean(-1)
    return out


def percentile_interval(means: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) [groups] of resampled means [groups, n_resamples] at `level`."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")
    if np.isnan(means).all():
        nan = np.full(means.shape[0], np.nan)
        return nan, nan
    tail = (1 - level) / 2
    return np.quantile(means, tail, axis=-1), np.quantile(means, 1 - tail, axis=-1)
