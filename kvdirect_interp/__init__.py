"""kvdirect_interp: measure the KV-Direct paper's claims on real and tiny models.

The public API that analysis code calls, re-exported; nothing else lives here. Internals
and registries of names stay in their modules (`kvdirect_interp.policies.POLICIES`,
`kvdirect_interp.hooks.SITES`, `kvdirect_interp.patch_metrics.METRICS`,
`kvdirect_interp.fastpath.FastPath`, `kvdirect_interp.chat.render`,
`kvdirect_interp.metrics.ulp_distance`).
"""

from ._weights import ChecksumError, MissingModelPackage
from .attribution import attribution_error, attribution_sweep
from .fastpath import fast_path
from .generation import Generation, Session, generate
from .hooks import ResidualTrace, capture_residuals, forward, patch_residual
from .kv import RebuiltKV, rebuild_kv, reconstruction_report
from .metrics import TokenMatch, bootstrap_ci, kl_divergence, token_match
from .models import DEFAULT_MODEL, list_models, load_model
from .patch_metrics import KL, LogitDiff, LogProb
from .policies import (
    H2O,
    TOVA,
    CachePolicy,
    EvictionPolicy,
    FullKV,
    KVDirect,
    NoCache,
    SnapKV,
    SnapKVPerStep,
    StreamingLLM,
    WindowOnly,
)
from .sampling import Sampling
from .sweep import patch_sweep, sweep_summary
from .tokens import to_tokens

__version__ = "0.1.0"  # pyproject.toml reads it from here

__all__ = [
    "__version__",
    "ChecksumError",
    "MissingModelPackage",
    "fast_path",
    "forward",
    "ResidualTrace",
    "capture_residuals",
    "patch_residual",
    "patch_sweep",
    "sweep_summary",
    "attribution_sweep",
    "attribution_error",
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
    "DEFAULT_MODEL",
    "list_models",
    "load_model",
    "to_tokens",
    "Generation",
    "generate",
    "Sampling",
    "Session",
    "CachePolicy",
    "EvictionPolicy",
    "FullKV",
    "NoCache",
    "KVDirect",
    "WindowOnly",
    "StreamingLLM",
    "H2O",
    "SnapKV",
    "SnapKVPerStep",
    "TOVA",
]
