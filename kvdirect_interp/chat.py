"""Chats: messages rendered with the tokenizer's chat template, and multi-turn sessions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ROLES = ("system", "user", "assistant")
# Tokenizers without a chat template (the tiny models' byte tokenizer) use this plain one.
_PLAIN = {"system": "System: {}\n", "user": "User: {}\n", "assistant": "Assistant: {}\n"}


def check_messages(messages: Sequence[dict]) -> list[dict]:
    if not messages:
        raise ValueError("empty prompt: the chat has no messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ValueError(
                f"message {i} must be a dict with exactly 'role' and 'content', got {m!r}"
            )
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has unknown role {m['role']!r}; accepted: {list(ROLES)}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise ValueError(f"message {i} ({m['role']}) has empty content")
        out.append(dict(m))
    return out


def render(tokenizer, messages: Sequence[dict], *, generation_prompt: bool = True) -> str:
    """The chat as text, with the tokenizer's template (or a plain one if it has none)."""
    messages = check_messages(messages)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    text = tokenizer.bos_token or ""
    text += "".join(_PLAIN[m["role"]].format(m["content"]) for m in messages)
    return text + ("Assistant: " if generation_prompt else "")


def chat_tokens(model: TransformerBridge, messages: Sequence[dict]) -> torch.Tensor:
    """[1, pos] tokens of a rendered chat (the template supplies any BOS itself)."""
    text = render(model.tokenizer, messages)
    ids = model.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return ids.to(model.cfg.device)


def continuation_text(tokenizer, history: Sequence[dict], new: Sequence[dict]) -> str:
    """Text to append after the last assistant reply's content so that the token stream
    becomes render(history + new) with a generation prompt: the template's end-of-turn
    marker, the new messages and the assistant prefix."""
    before = render(tokenizer, history, generation_prompt=False)
    after = render(tokenizer, [*history, *new], generation_prompt=True)
    last = history[-1]["content"]
    cut = before.rfind(last) + len(last)
    if cut < len(last) or not after.startswith(before[:cut]):
        raise ValueError(
            "this chat template does not extend earlier turns by appending; "
            "a session cannot continue it without re-encoding the chat"
        )
    return after[cut:]
