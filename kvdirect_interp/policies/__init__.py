"""Cache policies: one small dataclass per policy, sharing base.py."""

from .base import CachePolicy, Runner
from .full import FullKV
from .no_cache import NoCache

__all__ = ["CachePolicy", "Runner", "FullKV", "NoCache"]
