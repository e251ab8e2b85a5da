"""What a decode loop reports beyond its own records, opt in: an observer passed to
`generate`, `Session.say` or `forced_and_free` is told just before each forward pass and
adds what it measured to that pass's memory record. A plain `generate` records only what
its runner holds and the pass's seconds, and touches no process-wide state; `PeakMemory`
resets and reads the process's peak RSS (and the GPU's peak allocation) around every pass,
as claim 4's chats need."""

from __future__ import annotations

import torch

from .memory import reset_rss_peak, rss_peak_bytes


class Observer:
    """The contract: `before()` runs just before a forward pass, `after(logits)` just after
    it and returns the items to add to that pass's memory record. The base observes nothing."""

    def before(self) -> None:
        pass

    def after(self, logits: torch.Tensor) -> dict:
        return {}


class PeakMemory(Observer):
    """The peak memory of each pass: the process's peak resident set (Linux VmHWM, reset
    before the pass: `peak_rss_bytes`, None where unreadable) and, where the logits are on
    a GPU, `torch.cuda.max_memory_allocated` (`cuda_max_allocated_bytes`, reset too)."""

    def before(self) -> None:
        reset_rss_peak()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def after(self, logits: torch.Tensor) -> dict:
        record = {"peak_rss_bytes": rss_peak_bytes()}
        if logits.is_cuda:
            record["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(logits.device)
        return record
