"""kvdirect_interp: measure the KV-Direct paper's claims on real and tiny models.

The public API, re-exported; nothing else lives here.
"""

from ._weights import ChecksumError, MissingModelPackage
from .chat import render as render_chat
from .fastpath import FastPath, fast_path
from .generation import Generation, Sampling, Session, generate
from .hooks import SITES, ResidualTrace, capture_residuals, forward, patch_residual, patch_sweep
from .kv import RebuiltKV, rebuild_kv, reconstruction_report
from .metrics import TokenMatch, kl_divergence, token_match, ulp_distance
from .models import DEFAULT_MODEL, list_models, load_model
from .policies import (
    H2O,
    POLICIES,
    TOVA,
    CachePolicy,
    FullKV,
    KVDirect,
    NoCache,
    SnapKV,
    StreamingLLM,
    WindowOnly,
)
from .tokens import to_tokens

__all__ = [
    "ChecksumError",
    "MissingModelPackage",
    "FastPath",
    "fast_path",
    "forward",
    "SITES",
    "ResidualTrace",
    "capture_residuals",
    "patch_residual",
    "patch_sweep",
    "RebuiltKV",
    "rebuild_kv",
    "reconstruction_report",
    "TokenMatch",
    "kl_divergence",
    "token_match",
    "ulp_distance",
    "DEFAULT_MODEL",
    "list_models",
    "load_model",
    "to_tokens",
    "Generation",
    "generate",
    "Sampling",
    "Session",
    "render_chat",
    "CachePolicy",
    "FullKV",
    "NoCache",
    "KVDirect",
    "WindowOnly",
    "StreamingLLM",
    "H2O",
    "SnapKV",
    "TOVA",
    "POLICIES",
]
