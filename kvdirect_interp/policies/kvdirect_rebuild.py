"""KV-Direct's rebuild mechanism ("every_layer", "min_bytes"): evicted tokens keep their
resid_pre at each layer, and `kv.rebuild_kv` recomputes that layer's K/V from it (norm, two
projections, k-norm and rotary where the family has them) whenever attention needs them.

The residuals come from the forward pass itself (a resid_pre hook per layer), so a token's
checkpoint is the very tensor its cached K/V were computed from. With exact_shapes=True each
token is rebuilt with the GEMM shape of the pass that first computed it (its rows padded into
that many rows), which is what makes rebuilt K/V bitwise equal to the cached ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..kv import rebuild_kv
from ..memory import sliding_windows
from .base import tensor_bytes
from .kvdirect_window import KVDirectRunner, WindowLayer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from .kvdirect import KVDirect


class RebuildLayer(WindowLayer):
    def __init__(
        self, layer: int, sliding_window: int | None, runner: RebuildRunner, keep_all_kv: bool
    ) -> None:
        super().__init__(layer, sliding_window, runner)
        self.keep_all_kv = keep_all_kv  # min_bytes on a layer where K/V are the smaller
        self.window_resid = None  # [n_held, d_model]: kept to checkpoint tokens on eviction
        self.ck_resid = None  # [n_evicted, d_model]

    @property
    def evicts(self) -> bool:
        return not self.keep_all_kv

    def record_residual(self, resid: torch.Tensor) -> None:
        """resid_pre rows [q, d_model] of the tokens this forward pass processes."""
        if self.keep_all_kv:
            return
        rows = resid.detach().clone()
        self.window_resid = (
            rows if self.window_resid is None else torch.cat([self.window_resid, rows])
        )

    def rebuild(
        self, resid: torch.Tensor, positions, row_by_row: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K (rotated) and V [1, kv_heads, n, d_head] of this layer for its resid_pre rows
        resid [1, n, d_model] at `positions` [n] (`kv.rebuild_kv`; the HF path of
        hf_cache.py runs the HF layer's own modules instead)."""
        kv = rebuild_kv(
            self.runner.model, resid, self.layer, positions=positions, row_by_row=row_by_row
        )
        return kv.rot_k.transpose(1, 2), kv.v.transpose(1, 2)

    def evicted_kv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.ck_resid is None or len(self.ck_pos) == 0:
            return None
        if not self.runner.policy.exact_shapes:
            return self.rebuild(self.ck_resid[None], self.ck_pos)
        parts_k, parts_v = [], []
        pos = self.ck_pos.tolist()
        i = 0
        while i < len(pos):  # group consecutive tokens computed by the same forward pass
            start, length = self.runner.segments.of(pos[i])
            j = i
            if length == 1:
                # a run of one-token passes (decoded tokens): one call, a 1-row GEMM each
                while j < len(pos) and self.runner.segments.of(pos[j])[1] == 1:
                    j += 1
                k, v = self.rebuild(self.ck_resid[None, i:j], pos[i:j], row_by_row=True)
                parts_k.append(k)
                parts_v.append(v)
                i = j
                continue
            while j < len(pos) and pos[j] < start + length:
                j += 1
            offsets = torch.tensor(pos[i:j], device=self.ck_resid.device) - start
            padded = self.ck_resid.new_zeros(1, length, self.ck_resid.shape[-1])
            padded[0, offsets] = self.ck_resid[i:j]
            k, v = self.rebuild(padded, torch.arange(start, start + length, device=padded.device))
            parts_k.append(k[:, :, offsets])
            parts_v.append(v[:, :, offsets])
            i = j
        return torch.cat(parts_k, 2), torch.cat(parts_v, 2)

    def keep_only(self, index: torch.Tensor) -> None:
        super().keep_only(index)
        if self.window_resid is not None:
            self.window_resid = self.window_resid[index]

    def forget_checkpoints(self, visible: torch.Tensor) -> None:
        if self.ck_resid is not None:
            self.ck_resid = self.ck_resid[visible]

    def checkpoint(self, n_out: int) -> None:
        if self.window_resid is not None:
            rows = self.window_resid[:n_out]
            self.ck_resid = rows if self.ck_resid is None else torch.cat([self.ck_resid, rows])


class RebuildRunner(KVDirectRunner):
    def __init__(self, model: TransformerBridge, policy: KVDirect) -> None:
        cfg = model.cfg
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        keep_all = policy.keeps_kv(n_kv, cfg.d_head, cfg.d_model)
        layers = [RebuildLayer(l, w, self, keep_all) for l, w in enumerate(sliding_windows(model))]
        super().__init__(model, policy, layers)

    def hooks(self):
        def recorder(layer: RebuildLayer):
            def record(resid, hook):
                layer.record_residual(resid[0])

            return record

        # only where a residual is checkpointed: no hook at all lets the forward pass take
        # the unwrapped fast path (min_bytes where K/V are smaller everywhere)
        return [
            (f"blocks.{l.layer}.hook_resid_pre", recorder(l))
            for l in self.layers
            if not l.keep_all_kv
        ]

    def bytes_held(self) -> dict[str, int]:
        held = super().bytes_held()
        held["residual"] = tensor_bytes(
            *(t for l in self.layers for t in (l.ck_resid, l.window_resid))
        )
        return held

    def bytes_transient(self) -> int:
        """The largest rebuilt K/V handed to one layer's attention in the last forward pass
        (the zero rows that pad an exact-shape rebuild are not counted)."""
        return super().bytes_transient()
