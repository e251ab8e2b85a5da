"""kvdirect_interp: measure the KV-Direct paper's claims on real and tiny models.

The public API, re-exported; nothing else lives here.
"""

from ._weights import ChecksumError, MissingModelPackage
from .attribution import attribution_error, attribution_sweep
from .chat import render as render_chat
from .fastpath import FastPath, fast_path
from .generation import Generation, Session, generate
from .hooks import SITES, ResidualTrace, capture_residuals, forward, patch_residual, patch_sweep
from .kv import RebuiltKV, rebuild_kv, reconstruction_report
from .metrics import TokenMatch, bootstrap_ci, kl_divergence, token_match, ulp_distance
from .models import DEFAULT_MODEL, list_models, load_model
from .patch_metrics import KL, METRICS, LogitDiff, LogProb
from .policies import (
    H2O,
    POLICIES,
    TOVA,
    CachePolicy,
    FullKV,
    KVDirect,
    NoCache,
    SnapKV,
    SnapKVPerStep,
    StreamingLLM,
    WindowOnly,
)
from .sampling import Sampling
from .sweep import sweep_summary
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
    "sweep_summary",
    "attribution_sweep",
    "attribution_error",
    "METRICS",
    "KL",
    "LogitDiff",
    "LogProb",
    "bootstrap_ci",
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
    "SnapKVPerStep",
    "TOVA",
    "POLICIES",
]
