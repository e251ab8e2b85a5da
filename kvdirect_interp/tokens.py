"""Turning user input (text, texts, token tensors) into a checked [batch, pos] token tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

TokensLike = str | Sequence[str] | torch.Tensor


def _check_length(model, n_pos: int) -> None:
    n_ctx = model.cfg.n_ctx
    if n_pos > n_ctx:
        raise ValueError(
            f"prompt is {n_pos} tokens, longer than the model's context of "
            f"{n_ctx} tokens; accepted: 1..{n_ctx} (nothing is truncated)"
        )


def _from_text(model, text: str, prepend_bos: bool | None) -> torch.Tensor:
    if not isinstance(text, str):
        raise TypeError(f"expected a string prompt, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("empty prompt: the text has no characters besides whitespace")
    return model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0]


def to_tokens(
    model: TransformerBridge, tokens: TokensLike, *, prepend_bos: bool | None = None
) -> torch.Tensor:
    """A [batch, pos] int64 token tensor from text, a list of texts, or tokens.

    Text goes through the bridge's `to_tokens`; `prepend_bos=None` keeps the model family's
    own default (`model.cfg.default_prepend_bos`). A list of texts must tokenize to equal
    lengths: nothing is padded. A 1-D tensor is taken as one sequence.
    """
    if isinstance(tokens, str):
        out = _from_text(model, tokens, prepend_bos)[None]
    elif isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"token tensor must hold integers, got dtype {tokens.dtype}")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise ValueError(
                f"token tensor must be [pos] or [batch, pos], got shape {tuple(tokens.shape)}"
            )
        if tokens.numel() == 0:
            raise ValueError(f"empty prompt: token tensor of shape {tuple(tokens.shape)}")
        vocab = model.cfg.d_vocab
        if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
            raise ValueError(
                f"token ids must lie in 0..{vocab - 1} for this model; got "
                f"{int(tokens.min())}..{int(tokens.max())}"
            )
        out = tokens.to(torch.long)
    elif isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens):
        rows = [_from_text(model, t, prepend_bos) for t in tokens]
        lengths = [len(r) for r in rows]
        if len(set(lengths)) != 1:
            raise ValueError(
                f"prompts tokenize to different lengths {lengths}; give prompts "
                "of equal token length (nothing is padded or truncated)"
            )
        out = torch.stack(rows)
    elif isinstance(tokens, (list, tuple)) and not tokens:
        raise ValueError("empty prompt: an empty list of prompts")
    else:
        raise TypeError(
            "tokens must be a string, a list of strings, or an integer tensor "
            f"[batch, pos]; got {type(tokens).__name__}"
        )
    _check_length(model, out.shape[1])
    return out.to(model.cfg.device)
