"""The logic behind the widgets: plain functions returning tables (unit-tested directly)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .generation import generate
from .hooks import forward, patch_residual
from .kv import reconstruction_report
from .metrics import token_match
from .policies import CachePolicy
from .sweep import patch_sweep
from .tokens import to_tokens

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def parse_positions(text: str, n_pos: int) -> list[int] | None:
    """'all' (or empty) -> None; '1, 3, -1' -> [1, 3, n_pos - 1]; clear errors otherwise."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    try:
        values = [int(p) for p in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(
            f"positions must be 'all' or integers separated by commas, got {text!r}"
        ) from None
    for p in values:
        if not -n_pos <= p < n_pos:
            raise ValueError(
                f"position {p} is out of range; accepted: 0..{n_pos - 1} (or -{n_pos}..-1)"
            )
    return sorted({p % n_pos for p in values})


def patching_heatmap(
    model: TransformerBridge, clean, donor, *, site: str = "resid_pre"
) -> pd.DataFrame:
    """KL(clean || patched) at the last position when one position of the donor's residual
    is patched in at one layer: a [layer x position] table, by the exact fast sweep (its
    attrs say which path ran: patch_sweep's df.attrs)."""
    df = patch_sweep(
        model, clean, donor, site=site, metric="kl_to_clean", per_position=True, progress=False
    )
    grid = df[df.batch == 0].pivot(index="layer", columns="position", values="kl_to_clean")
    grid.attrs.update(df.attrs)
    return grid


def position_labels(model: TransformerBridge, text) -> list[str]:
    """One axis label per token of `text`: "position: token" (the token as decoded, with
    whitespace made visible), so repeated tokens stay distinct."""
    toks = to_tokens(model, text)[0]
    out = []
    for i, t in enumerate(toks.tolist()):
        piece = model.tokenizer.decode([t]) if model.tokenizer is not None else str(t)
        out.append(f"{i}: {piece.replace(' ', '·').replace(chr(10), '⏎') or '∅'}")
    return out


@torch.no_grad()
def top_token_changes(
    model: TransformerBridge,
    clean,
    donor,
    *,
    site: str = "resid_pre",
    positions: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per layer, the top next token at the last position: clean, donor, and patched (the
    donor's residual at `positions`, all by default)."""
    clean_t, donor_t = to_tokens(model, clean), to_tokens(model, donor)
    word = lambda logits: model.tokenizer.decode([int(logits[0, -1].argmax())])
    clean_top, donor_top = word(forward(model, clean_t)), word(forward(model, donor_t))
    rows = []
    for layer in range(model.cfg.n_layers):
        patched = patch_residual(
            model, clean_t, layer=layer, source=donor_t, positions=positions, site=site
        )
        top = word(patched)
        rows.append(
            {
                "layer": layer,
                "clean": clean_top,
                "patched": top,
                "donor": donor_top,
                "changed": top != clean_top,
            }
        )
    return pd.DataFrame(rows)


def reconstruction_view(model: TransformerBridge, text, *, shape: str = "same") -> pd.DataFrame:
    """One rebuild shape of the reconstruction report, tensors compared against a hook."""
    df = reconstruction_report(model, text, shapes=(shape,))
    return df[df.reference.notna()].reset_index(drop=True)


def compare_generations(
    model: TransformerBridge,
    prompt,
    policy_a: CachePolicy,
    policy_b: CachePolicy,
    *,
    max_new_tokens: int = 20,
) -> dict:
    """Greedy generations under two policies, aligned token by token, with memory curves."""
    a = generate(model, prompt, max_new_tokens=max_new_tokens, cache=policy_a)
    b = generate(model, prompt, max_new_tokens=max_new_tokens, cache=policy_b)
    tok = model.tokenizer
    aligned = pd.DataFrame(
        {
            "step": range(max_new_tokens),
            "a": [tok.decode([int(t)]) for t in a.new_tokens[0]],
            "b": [tok.decode([int(t)]) for t in b.new_tokens[0]],
            "equal": (a.new_tokens[0] == b.new_tokens[0]).tolist(),
        }
    )
    held = lambda g: (
        g.memory_frame()
        .filter(like="_bytes")
        .drop(columns=["rebuilt_bytes", "peak_rss_bytes"], errors="ignore")
        .fillna(0)
        .sum(axis=1)
    )
    memory = pd.DataFrame({"step": range(len(a.memory)), "a_bytes": held(a), "b_bytes": held(b)})
    match = token_match(a.new_tokens, b.new_tokens)
    return {
        "aligned": aligned,
        "first_divergence": match.first_divergence,
        "token_match": match.fraction,
        "memory": memory,
    }
