"""Cache policies: one small dataclass per policy, sharing base.py (and evict.py for the
eviction baselines); registry.py lists them all by name."""

from .base import CachePolicy, Runner
from .evict import EvictionPolicy
from .full import FullKV
from .h2o import H2O
from .kvdirect import KVDirect
from .no_cache import NoCache
from .registry import POLICIES
from .snapkv import SnapKV
from .snapkv_per_step import SnapKVPerStep
from .streaming_llm import StreamingLLM
from .tova import TOVA
from .window import WindowOnly

__all__ = [
    "CachePolicy",
    "Runner",
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
    "POLICIES",
]
