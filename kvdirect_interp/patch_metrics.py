"""Metrics of a patched run, as `patch_sweep` and `attribution_sweep` call them.

A metric is called as `metric(patched, clean, donor)` on logits [batch, pos, d_vocab] and
returns float64 values [batch, pos]. Built in (by name in `METRICS`, or as objects):

- `KL("donor")`, "kl_to_donor": D_KL(donor || patched), 0 where the patch gives the donor's
  output exactly; `KL("clean")`, "kl_to_clean"; `KL(..., reverse=True)`,
  "reverse_kl_to_donor" / "reverse_kl_to_clean": D_KL(patched || reference);
- `LogitDiff(answer, distractor)`: patched logit of the answer token minus that of the
  distractor (ids: one per run or one per batch row);
- `LogProb(token)`: the patched log-probability of a token;
- "top_token_is_donor": 1.0 where the patched top token is the donor's.

`positionwise` says the value at a position depends on that position's logits alone (then a
per-position sweep computes the last position only); `differentiable` that
`attribution_sweep` can take its gradient. Any callable works as a metric; one without
these attributes is treated as neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .metrics import kl_with_grad

TokenIds = int | Sequence[int] | torch.Tensor  # one id, or one per batch row


def _ids(ids: TokenIds, what: str) -> torch.Tensor:
    """A [1] or [batch] int64 tensor of token ids; refuses floats, negatives and empties."""
    if isinstance(ids, bool):
        raise ValueError(f"{what} must be a token id (int) or one per batch row, got {ids!r}")
    t = torch.as_tensor(ids)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() > 1:
        raise ValueError(
            f"{what} must be a token id (int) or a 1-D sequence of ids, one per batch row; "
            f"got {ids!r}"
        )
    t = t.reshape(-1).to(torch.int64)
    if t.numel() == 0 or bool((t < 0).any()):
        raise ValueError(f"{what} must hold non-negative token ids, got {ids!r}")
    return t


def _gather(logits: torch.Tensor, ids: torch.Tensor, what: str) -> torch.Tensor:
    """logits [batch, pos, vocab] at ids ([1] or [batch]) -> [batch, pos]."""
    n_batch, n_pos, n_vocab = logits.shape
    if ids.numel() not in (1, n_batch):
        raise ValueError(
            f"{what} has {ids.numel()} ids for a batch of {n_batch}: give one id, or one "
            "per batch row"
        )
    if int(ids.max()) >= n_vocab:
        raise ValueError(f"{what} id {int(ids.max())} is outside the vocabulary (0..{n_vocab - 1})")
    index = ids.to(logits.device).expand(n_batch)[:, None, None].expand(n_batch, n_pos, 1)
    return logits.gather(-1, index)[..., 0]


@dataclass(frozen=True)
class KL:
    """D_KL(reference || patched) in float64 (reverse=True: D_KL(patched || reference)),
    reference "donor" or "clean"."""

    reference: str = "donor"
    reverse: bool = False
    positionwise = True
    differentiable = True

    def __post_init__(self) -> None:
        if self.reference not in ("donor", "clean"):
            raise ValueError(f"reference must be 'donor' or 'clean', got {self.reference!r}")

    @property
    def __name__(self) -> str:
        return f"{'reverse_' if self.reverse else ''}kl_to_{self.reference}"

    def __call__(self, patched, clean, donor) -> torch.Tensor:
        ref = donor if self.reference == "donor" else clean
        return kl_with_grad(patched, ref) if self.reverse else kl_with_grad(ref, patched)


@dataclass(frozen=True, eq=False)  # tensors inside: identity, not value, equality
class LogitDiff:
    """logit[answer] - logit[distractor] of the patched run, float64 [batch, pos]."""

    answer: TokenIds
    distractor: TokenIds
    positionwise = True
    differentiable = True
    __name__ = "logit_diff"

    def __post_init__(self) -> None:
        object.__setattr__(self, "answer", _ids(self.answer, "answer"))
        object.__setattr__(self, "distractor", _ids(self.distractor, "distractor"))

    def __call__(self, patched, clean, donor) -> torch.Tensor:
        x = patched.to(torch.float64)
        return _gather(x, self.answer, "answer") - _gather(x, self.distractor, "distractor")


@dataclass(frozen=True, eq=False)
class LogProb:
    """log p(token) under the patched run, float64 [batch, pos]."""

    token: TokenIds
    positionwise = True
    differentiable = True
    __name__ = "logprob"

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", _ids(self.token, "token"))

    def __call__(self, patched, clean, donor) -> torch.Tensor:
        return _gather(torch.log_softmax(patched.to(torch.float64), -1), self.token, "token")


@dataclass(frozen=True)
class TopTokenIsDonor:
    """1.0 where the patched run's top token is the donor's, else 0.0 [batch, pos]."""

    positionwise = True
    differentiable = False
    __name__ = "top_token_is_donor"

    def __call__(self, patched, clean, donor) -> torch.Tensor:
        return (patched.argmax(-1) == donor.argmax(-1)).to(torch.float64)


METRICS = {
    "kl_to_donor": KL("donor"),
    "kl_to_clean": KL("clean"),
    "reverse_kl_to_donor": KL("donor", reverse=True),
    "reverse_kl_to_clean": KL("clean", reverse=True),
    "top_token_is_donor": TopTokenIsDonor(),
}


def resolve(metric) -> tuple[str, object]:
    """(column name, callable) of a metric given by name or as a callable."""
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(
                f"unknown metric {metric!r}; accepted: {list(METRICS)}, LogitDiff(answer, "
                "distractor), LogProb(token), KL(reference, reverse) or any callable "
                "f(patched, clean, donor) -> [batch, pos]"
            )
        return metric, METRICS[metric]
    if not callable(metric):
        raise ValueError(f"metric must be a name in {list(METRICS)} or a callable, got {metric!r}")
    return getattr(metric, "__name__", "custom"), metric


def is_positionwise(metric) -> bool:
    return getattr(metric, "positionwise", False) is True
