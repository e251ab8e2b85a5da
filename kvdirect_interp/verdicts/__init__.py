"""Measurements -> verdict rows: one pure function per claim of the paper.

Each function takes plain numbers or the DataFrames the experiments produce, checks them (a
ValueError names what is missing and what is accepted), splits the claim into parts, judges
each part by the rule in its docstring and returns a `Verdict`: HOLDS, CONDITIONAL ("holds
under conditions"), FAILS or NOT_SETTLED (intervals that neither clear nor exclude the paper's
figure), with its `price` where it pays one. `Verdict.measured` is written from the parts,
never typed by a caller. No model and no torch here: every outcome can be reached with
synthetic numbers.
"""

from .agreement import claim5
from .latency import claim6
from .memory import claim4
from .price import ROLES, cost_ratios
from .residual import claim1, claim2, claim3
from .rows import (
    CONDITIONAL,
    FAILS,
    HOLDS,
    KVDIRECT_MODES,
    NOT_SETTLED,
    OUTCOMES,
    REBUILD_SHAPES,
    REFERENCE_POLICIES,
    REPLAY_MODES,
    Part,
    Verdict,
    describe,
    parts_table,
    table,
)

__all__ = [
    "CONDITIONAL",
    "FAILS",
    "HOLDS",
    "KVDIRECT_MODES",
    "NOT_SETTLED",
    "OUTCOMES",
    "REBUILD_SHAPES",
    "REFERENCE_POLICIES",
    "REPLAY_MODES",
    "ROLES",
    "Part",
    "Verdict",
    "claim1",
    "claim2",
    "claim3",
    "claim4",
    "claim5",
    "claim6",
    "cost_ratios",
    "describe",
    "parts_table",
    "table",
]
