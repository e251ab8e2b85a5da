"""The study's shards as submitit jobs: what a job runs (a shard of claims, or the merge),
the executors that submit them (local processes, SLURM), and why an ended job failed.
cluster.py decides which jobs to submit, when, and waits for them.

submitit is an optional dependency (the extra `cluster`): only `load_submitit` imports it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from . import facts as model_facts
from .plan import EXCLUSIVE_CLAIMS, plan
from .run import loader, merge, run_study, shard_of
from .store import ClaimStore
from .units import Unit

KINDS = ("local", "slurm")  # submitit's LocalExecutor, SlurmExecutor
TIME_MIN = 12 * 60  # a SLURM job's default time limit; a shard cut there is resubmitted
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default (2 min) would end every shard
INSTALL = "pip install 'kvdirect_interp[cluster]'"


def load_submitit():
    """The submitit module, or an ImportError saying how to install it."""
    try:
        import submitit  # optional dependency (extra `cluster`): only the executors need it
    except ImportError:
        raise ImportError(f"--executor local/slurm needs submitit: {INSTALL}") from None
    return submitit


def require(kind: str):
    """submitit, having checked that `kind`'s jobs can be submitted from here: an
    ImportError (no submitit) or RuntimeError (no SLURM commands) says what is missing."""
    submitit = load_submitit()
    if kind == "slurm" and shutil.which("srun") is None:  # what submitit looks for
        raise RuntimeError(
            "--executor slurm needs SLURM's commands (sbatch, sacct, srun) on PATH: "
            "run it where jobs are submitted (the cluster's login node)"
        )
    return submitit


@dataclass(frozen=True)
class SlurmOptions:
    """What each SLURM job asks for: sbatch's flags (None: the cluster's default)."""

    partition: str | None = None
    time: int = TIME_MIN  # minutes
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None  # also each task's torch threads
    mem: str | None = None  # sbatch's --mem, e.g. "16G"
    extra: dict[str, str] = field(default_factory=dict)  # more flags, named as sbatch names them

    def parameters(self) -> dict[str, Any]:
        """As submitit's SlurmExecutor takes them."""
        named = {
            "partition": self.partition,
            "time": self.time,
            "gpus_per_task": self.gpus_per_task,
            "cpus_per_task": self.cpus_per_task,
            "mem": self.mem,
        }
        params: dict[str, Any] = {k: v for k, v in named.items() if v is not None}
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params


@dataclass(frozen=True)
class Task:
    """One job's work: `run_study` on shard `shard` (i, n) of `claims`."""

    claims: tuple[int, ...]
    shard: tuple[int, int]

    @property
    def exclusive(self) -> bool:
        """Whether it needs a node to itself (plan.EXCLUSIVE_CLAIMS)."""
        return any(c in EXCLUSIVE_CLAIMS for c in self.claims)

    def __str__(self) -> str:
        return f"shard {self.shard[0]}/{self.shard[1]} of claims {','.join(map(str, self.claims))}"


@dataclass(frozen=True)
class Failure:
    """A task whose job ended without its result: its state, log and last error line."""

    task: Task
    job_id: str
    state: str
    log: Path
    error: str

    def __str__(self) -> str:
        why = f": {self.error}" if self.error else ""
        return f"{self.task} (job {self.job_id}) failed, {self.state}{why}\n  log: {self.log}"


def unfinished(out, model_name: str, plans: dict[int, list[Unit]], task: Task) -> list[str]:
    """The keys of `task`'s units not yet in the records (`plans`: claim -> its units)."""
    keys = []
    for c in task.claims:
        done = ClaimStore(Path(out), model_name, c).finished()
        keys += [u.key for u in shard_of(plans[c], task.shard) if u.key not in done]
    return keys


def run_shard(
    model_name: str,
    size: str,
    claims: Sequence[int],
    shard: tuple[int, int],
    out: str,
    threads: int | None = None,
) -> list[str]:
    """A job's work, on its node: `run_study` on `shard` of `claims` with its bars off (its
    log is a file), on `threads` torch threads (None: torch's default). The keys measured."""
    if threads:
        torch.set_num_threads(threads)  # tasks sharing a machine share its cores
    return run_study(model_name, size, claims=claims, shard=shard, out=out, progress=False).ran


def merge_finished(model_name: str, size: str, claims: Sequence[int], out: str) -> dict:
    """The merge job's work: the tables once every unit is finished, else an error."""
    facts = model_facts.read(out, model_name) or loader(model_name)("float32")
    plans = {c: plan(model_name, facts, c, size) for c in claims}
    left = len(unfinished(out, model_name, plans, Task(tuple(claims), (0, 1))))
    if left:
        raise RuntimeError(f"{left} units are unfinished: submit again, only they run")
    return {c: str(p) for c, p in merge(model_name, size, claims=claims, out=out).items()}


def executor(
    kind: str,
    folder: Path,
    *,
    slurm: SlurmOptions | None = None,
    exclusive: bool = False,
    parallel: int = 1,
    name: str = "kvdirect-study",
):
    """A submitit executor keeping its job files and logs in `folder`; on SLURM its jobs
    ask for `slurm`, a node to themselves if `exclusive`, an array runs `parallel` at once."""
    submitit = require(kind)
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, **_these_gpus())
        return ex
    if kind != "slurm":
        raise ValueError(f"unknown executor {kind!r}; accepted: {list(KINDS)}")
    ex = submitit.SlurmExecutor(folder=folder)
    params = (slurm or SlurmOptions()).parameters() | ({"exclusive": True} if exclusive else {})
    ex.update_parameters(job_name=name, array_parallelism=parallel, **params)
    return ex


def _these_gpus() -> dict[str, Any]:
    """LocalExecutor's parameters that give its processes this process's GPUs: it sets
    their CUDA_VISIBLE_DEVICES, to none unless asked, and claim 6 times a GPU tier where
    one is present. A mask of GPU UUIDs cannot be passed on: they see none then."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [str(i) for i in range(torch.cuda.device_count())] if mask is None else mask.split(",")
    if not all(i.strip().isdigit() for i in ids):
        return {}
    gpus = [int(i) for i in ids]
    return {"gpus_per_node": len(gpus), "visible_gpus": gpus} if gpus else {}


def submit(
    model_name: str,
    size: str,
    tasks: Sequence[Task],
    *,
    out: Path,
    kind: str,
    logs: Path,
    slurm: SlurmOptions | None = None,
    threads: int | None = None,
) -> list[tuple[Task, Any]]:
    """Submit `tasks` (out: absolute): those that may share a node as one array, the
    exclusive one apart. Their job files and logs go to a new folder under `logs` (local
    job ids are process ids, which come again). `threads`: torch threads per task (default:
    locally the machine's cores shared out, on SLURM --slurm-cpus-per-task)."""
    Path(logs).mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S-")
    folder = Path(tempfile.mkdtemp(prefix=stamp, dir=logs))
    jobs = []
    for alone in (False, True):
        group = [t for t in tasks if t.exclusive == alone]
        if not group:
            continue
        k = len(group)
        name = f"kvdirect-{model_name}"
        ex = executor(kind, folder, slurm=slurm, exclusive=alone, parallel=k, name=name)
        n = threads
        if n is None and kind == "local" and not alone:
            n = max(1, (os.cpu_count() or 1) // k)
        elif n is None and slurm is not None:
            n = slurm.cpus_per_task
        claims, shards = [t.claims for t in group], [t.shard for t in group]
        submitted = ex.map_array(
            run_shard, [model_name] * k, [size] * k, claims, shards, [str(out)] * k, [n] * k
        )
        jobs += list(zip(group, submitted, strict=True))
    return jobs


def failure(task: Task, job) -> Failure | None:
    """Why an ended job has no result, or None if it finished. A job that ran to its end
    left a result file (with its error, if it raised); one without was killed or never
    ran, and only then is its state asked (submitit would wait for that file)."""
    if job.paths.result_pickle.exists():
        if job.exception() is None:
            return None
        state = "with an error"
    else:  # a local job's controller may end cleanly when its task was killed
        state = job.state.replace("FINISHED", "ended without its result")
    return Failure(task, str(job.job_id), state, job.paths.stderr, _last_line(job.paths.stderr))


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""
