"""The resumable, shardable research-scale runner (`kvdirect-interp study`).

units.py (what a unit is and its key), plan.py (the sizes: every claim's units at smoke and
full, and what is not yet measured), measure.py (a unit -> the experiments' function),
store.py (the JSON-lines results files), run.py (run, skip, shard, merge), provenance.py
(the columns every row carries), facts.py (what a stored study keeps of its model:
OUT/<model>/model.json), reproduce.py (a stored unit measured again and compared),
report.py, paper.py and figure.py (the READMEs' tables and the summary figure), cluster.py
and jobs.py (the shards as SLURM or local jobs through submitit: `--executor`).
"""

from .facts import ModelFacts
from .plan import CLAIM5_BUDGETS, CLAIMS, NEEDS_MODEL, SIZES, equal_memory_budgets, plan
from .reproduce import compare, recheck, remeasure, stored_unit
from .run import Outcome, loader, merge, parse_shard, run_study, shard_of, table
from .units import Unit, package_version

__all__ = [
    "CLAIM5_BUDGETS",
    "CLAIMS",
    "NEEDS_MODEL",
    "ModelFacts",
    "SIZES",
    "equal_memory_budgets",
    "Outcome",
    "compare",
    "recheck",
    "remeasure",
    "stored_unit",
    "Unit",
    "loader",
    "merge",
    "package_version",
    "parse_shard",
    "plan",
    "run_study",
    "shard_of",
    "table",
]
