"""Bytes per evicted token of each way to store it, as the policies holding them state it:
the table claim 4's verdict reads (`bytes_per_token_table`)."""

from __future__ import annotations

import pandas as pd

from ..memory import Shape, kv_bytes_per_token
from .full import FullKV
from .kvdirect import KVDirect


def bytes_per_token_table(shapes: list[Shape]) -> pd.DataFrame:
    """Bytes per evicted token of each storage kind, and each one's ratio to K/V, as the
    policies holding them state it (`bytes_per_token`, all kinds summed): bytes_per_token
    and vs_kv count every layer (the rate while a sequence is within every sliding window);
    past_window and past_window_vs_kv count the layers that still grow once it is past them
    (`Shape.past_window`: K/V and per-layer residuals of global layers only; one residual or
    a token id per token, as before, since a re-prefill must rebuild every token for the
    global layers). The two agree on models without sliding layers; past_window_vs_kv is
    NaN where no layer is global (the full cache itself stops growing past its window)."""
    storage = {
        "K/V (standard cache)": FullKV(),
        "every_layer (resid_pre x L)": KVDirect(1, checkpoint="every_layer"),
        "min_bytes (per layer min)": KVDirect(1, checkpoint="min_bytes"),
        "first_layer (one residual)": KVDirect(1, checkpoint="first_layer"),
        "token_ids": KVDirect(1, checkpoint="token_ids"),
    }
    rows = []
    for s in shapes:
        kv, long = kv_bytes_per_token(s), s.past_window()
        kv_long = kv_bytes_per_token(long)
        for label, policy in storage.items():
            b = sum(policy.bytes_per_token(s).values())
            b_long = sum(policy.bytes_per_token(long).values())
            rows.append(
                {
                    "model": s.name,
                    "storage": label,
                    "bytes_per_token": b,
                    "vs_kv": b / kv,
                    "past_window": b_long,
                    "past_window_vs_kv": b_long / kv_long if kv_long else float("nan"),
                }
            )
    return pd.DataFrame(rows)
