"""Every policy, by name: one factory per policy mapping a budget (tokens of K/V kept: the
eviction baselines' budget, KV-Direct's window; ignored by FullKV and NoCache) to a policy
with small settings that suit any budget >= 1.

This one table drives the generic policy tests, experiments' BASELINES and KVDIRECT_MODES,
and any name-to-policy lookup (cost.step_flops' old string form). Keys are each policy's
`name`, so a name in a results table leads back here.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import CachePolicy
from .evict import EvictionPolicy
from .full import FullKV
from .h2o import H2O
from .kvdirect import MODES, KVDirect
from .no_cache import NoCache
from .snapkv import SnapKV
from .snapkv_per_step import SnapKVPerStep
from .streaming_llm import StreamingLLM
from .tova import TOVA
from .window import WindowOnly

Factory = Callable[[int], CachePolicy]


def _snapkv_per_step(budget: int) -> SnapKVPerStep:
    window = max(1, min(8, budget // 2))  # observation window within the budget
    return SnapKVPerStep(budget, observation_window=window, kernel=min(5, 2 * (window // 2) + 1))


def _kvdirect(mode: str) -> Factory:
    return lambda window: KVDirect(window, checkpoint=mode)


_FACTORIES: list[Factory] = [
    lambda budget: FullKV(),
    lambda budget: NoCache(),
    *(_kvdirect(mode) for mode in MODES),
    WindowOnly,
    lambda budget: StreamingLLM(budget, sinks=min(4, budget - 1)),
    H2O,
    SnapKV,  # the published defaults: window 32, kernel 5, avg pooling, the prompt once
    _snapkv_per_step,
    TOVA,
]

# name -> factory; the name is the policy's own, so the two never disagree
POLICIES: dict[str, Factory] = {make(1).name: make for make in _FACTORIES}


def of_kind(kind: type) -> dict[str, Factory]:
    """The registered policies that are instances of `kind`, in registry order."""
    return {name: make for name, make in POLICIES.items() if isinstance(make(1), kind)}


def baselines() -> dict[str, Factory]:
    """The eviction baselines (WindowOnly, StreamingLLM, H2O, SnapKV, SnapKVPerStep,
    TOVA)."""
    return of_kind(EvictionPolicy)


def kvdirect_modes() -> dict[str, Factory]:
    """KVDirect under each checkpoint mode, "KVDirect[every_layer]" first."""
    return of_kind(KVDirect)


def replay_modes() -> list[str]:
    """The KVDirect modes that re-run evicted tokens through every layer (first_layer,
    token_ids), by name, in registry order; the others rebuild K/V per layer."""
    return [name for name, make in kvdirect_modes().items() if make(1).replays]


def make(name: str, budget: int) -> CachePolicy:
    """The registered policy `name` (its `name`, as results tables spell it) at this budget."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; accepted: {list(POLICIES)}")
    return POLICIES[name](budget)
