"""What a KV-Direct mode pays beside FullKV, in numbers from the rows: FLOPs per decode step
and decode tokens/s as ratios to FullKV's at one context, written as the short text that
claims 4 and 5 carry in their headline (`Verdict.price`). No model and no torch here."""

from __future__ import annotations

import pandas as pd

from .rows import KVDIRECT_MODES, check, frame

# what each checkpoint mode is, as the verdicts name it
ROLES = {
    "every_layer": "the paper's diagram (a residual per layer per token)",
    "first_layer": "the paper's 5 KB figure (one residual per token)",
    "token_ids": "no checkpoint (token ids: the reference re-prefill)",
    "min_bytes": "per layer the smaller of residual and K/V",
}


def mode_of(policy: str) -> str | None:
    """The KV-Direct checkpoint mode a policy name stands for ("KVDirect[m]" or bare "m")."""
    if policy.startswith("KVDirect[") and policy.endswith("]"):
        policy = policy[len("KVDirect[") : -1]
    return policy if policy in KVDIRECT_MODES else None


def ratio(x: float) -> str:
    """A ratio for reading: 850x, 12x, 1.5x, 0.03x."""
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2g}x"


def cost_ratios(cost: pd.DataFrame | None) -> dict[str, dict]:
    """mode -> {context, flops_vs_fullkv, tok_s_vs_fullkv (None where not measured)}.

    cost: rows (policy, context, flops_per_step[, decode_tok_s]), FullKV among them (e.g.
    claim 6's decode rows, or each policy's `step_flops` formula at a context). Each mode is
    read at the largest context where both it and FullKV have a row. None or no FullKV row:
    {} (the price then names no numbers)."""
    if cost is None:
        return {}
    what = "cost table"
    df = frame(cost, what, ("policy", "context", "flops_per_step"), ("decode_tok_s",))
    df = check(df, what, names=("policy",), numeric=("context", "flops_per_step"))
    full = df[df.policy == "FullKV"].set_index("context")
    out = {}
    for policy, rows in df.groupby("policy"):
        mode = mode_of(policy)
        shared = rows[rows.context.isin(full.index)]
        if mode is None or shared.empty:
            continue
        row = shared.loc[shared.context.idxmax()]
        ref = full.loc[row.context]
        tok = None
        if "decode_tok_s" in df.columns and pd.notna(row.decode_tok_s):
            tok = float(row.decode_tok_s) / float(ref.decode_tok_s)
        out[mode] = {
            "context": int(row.context),
            "flops_vs_fullkv": float(row.flops_per_step) / float(ref.flops_per_step),
            "tok_s_vs_fullkv": tok,
        }
    return out


def price_of(modes: list[str], costs: dict[str, dict]) -> str:
    """ "<a>x FullKV's FLOPs per step, <b>x its decode tokens/s at <n> tokens" for the
    cheapest of `modes` (the one with the fewest FLOPs), "" where none has a cost."""
    known = [m for m in modes if m in costs]
    if not known:
        return ""
    m = min(known, key=lambda k: costs[k]["flops_vs_fullkv"])
    c = costs[m]
    text = f"{ratio(c['flops_vs_fullkv'])} FullKV's FLOPs per step"
    if c["tok_s_vs_fullkv"] is not None:
        text += f", {ratio(c['tok_s_vs_fullkv'])} its decode tokens/s"
    return f"{text} at {c['context']:,} tokens ({m})"
