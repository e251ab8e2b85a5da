"""The study on a cluster: its shards as one SLURM job array (or as local processes),
watched through the records they append, then merged. jobs.py makes and submits the jobs.

`run` submits N tasks, task i running `run_study` on shard i/N of every claim that may share
a node, and the claims that may not (plan.EXCLUSIVE_CLAIMS: claim 6's timings) as one job of
their own: on SLURM at the same time on an exclusive node, locally after the other shards
have ended (one machine). Only tasks with unfinished units are submitted and each skips what
is finished, so submitting again reruns only what a failed or killed shard left. Every task
appends to the same OUT/<model>/claim<N>.jsonl (store.py's lock). Waiting shows one bar over
the units done, read from those files; a task that ends without its result is reported with
its log's path; when none failed, the tables are merged (run.merge). Not waiting (SLURM
only), a last job merges once every shard has ended.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import facts as model_facts
from .jobs import (
    KINDS,
    Failure,
    SlurmOptions,
    Task,
    executor,
    failure,
    merge_finished,
    require,
    submit,
    unfinished,
)
from .plan import CLAIMS, EXCLUSIVE_CLAIMS, plan
from .run import loader, merge
from .store import ClaimStore

LOGS = Path(".scratch") / "submitit"  # under OUT/<model>/: on the results' (shared) disk
POLL_S = 5.0  # seconds between two looks at the records and the jobs while waiting


@dataclass
class Submitted:
    """What `run` did: the jobs (task, submitit job), the failed tasks, the tables merged
    (claim -> path; none unless every task finished) and, not waiting, the merge job."""

    jobs: list[tuple[Task, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    merged: dict[int, Path] = field(default_factory=dict)
    merge_job: Any = None


def waves(claims: Sequence[int], shards: int, kind: str) -> list[list[Task]]:
    """The tasks, in the waves they run in: on SLURM one (the array, and the exclusive
    claims' job on a node of its own); locally two (the exclusive claims' job after)."""
    shared = tuple(c for c in claims if c not in EXCLUSIVE_CLAIMS)
    alone = tuple(c for c in claims if c in EXCLUSIVE_CLAIMS)
    array = [Task(shared, (i, shards)) for i in range(shards)] if shared else []
    solo = [Task(alone, (0, 1))] if alone else []
    return [array + solo] if kind == "slurm" else [w for w in (array, solo) if w]


def watch(jobs: Sequence[tuple[Task, Any]], *, update=None, poll_s: float = POLL_S):
    """Wait for `jobs` to end, calling `update` (the bar) every poll_s seconds; the
    failures (jobs.Failure) of those that ended without their result."""
    pending = list(jobs)
    while pending:
        pending = [(t, j) for t, j in pending if not j.done()]
        if update is not None:
            update()
        if pending:
            time.sleep(poll_s)
    return [f for t, j in jobs if (f := failure(t, j)) is not None]


def run(
    model_name: str,
    size: str,
    *,
    claims: Sequence[int] | None = None,
    out: Path | str = "results",
    kind: str = "local",
    shards: int = 2,
    slurm: SlurmOptions | None = None,
    logs: Path | str | None = None,
    wait: bool = True,
    progress: bool = True,
    poll_s: float | None = None,
    threads: int | None = None,
) -> Submitted:
    """Run the study's unfinished units as `shards` tasks on `kind` ("local", "slurm"),
    wait for them (a bar over the units done) and merge; or, wait=False (SLURM only),
    return once a last job that merges is submitted too. Job files and logs: `logs`
    (default OUT/<model>/.scratch/submitit, on the disk the nodes share). `threads`:
    torch threads per task (jobs.submit)."""
    if kind not in KINDS:
        raise ValueError(f"unknown executor {kind!r}; accepted: {list(KINDS)}")
    if shards < 1:
        raise ValueError(f"shards must be at least 1; got {shards}")
    if not wait and kind != "slurm":
        raise ValueError("not waiting needs SLURM: local tasks are this process's children")
    claims = list(CLAIMS if claims is None else claims)
    if bad := [c for c in claims if c not in CLAIMS]:
        raise ValueError(f"unknown claims {bad}; accepted: {list(CLAIMS)}")
    out = Path(out).resolve()  # the jobs may start in another folder
    logs = Path(logs).resolve() if logs else out / model_name / LOGS
    require(kind)  # submitit and SLURM's commands, before a model is loaded to plan
    facts = model_facts.read(out, model_name)
    if facts is None:  # the plans of claims 2 and 5 ask the model
        facts = model_facts.ModelFacts.of(loader(model_name)("float32"), model_name)
        model_facts.write(out, facts)
    plans = {c: plan(model_name, facts, c, size) for c in claims}
    keys = {c: {u.key for u in units} for c, units in plans.items()}
    done = Submitted()
    bar = tqdm(
        total=sum(map(len, keys.values())),
        desc=f"{model_name} {size}",
        unit="unit",
        **({} if progress and wait else {"disable": True}),
    )

    def update():
        n = sum(len(ClaimStore(out, model_name, c).finished() & k) for c, k in keys.items())
        bar.update(n - bar.n)

    update()
    try:
        for wave in waves(claims, shards, kind):
            todo = [t for t in wave if unfinished(out, model_name, plans, t)]
            if not todo:
                continue
            jobs = submit(
                model_name, size, todo, out=out, kind=kind, logs=logs, slurm=slurm, threads=threads
            )
            done.jobs += jobs
            if wait:
                done.failures += watch(jobs, update=update, poll_s=poll_s or POLL_S)
            else:
                done.merge_job = _submit_merge(model_name, size, claims, out, logs, slurm, jobs)
    except KeyboardInterrupt:
        if kind == "slurm" and done.jobs:
            print(
                f"\nstopped waiting; jobs {' '.join(_ids(done.jobs))} run on (scancel stops them)"
            )
        raise
    finally:
        bar.close()
    if not done.failures and done.merge_job is None:
        done.merged = merge(model_name, size, claims=claims, out=out, model=facts)
    return done


def _ids(jobs) -> list[str]:
    """The SLURM job ids of `jobs`, an array's once (its id stands for all its tasks)."""
    return sorted({str(j.job_id).split("_")[0] for _, j in jobs})


def _submit_merge(model_name, size, claims, out, logs, slurm, jobs):
    """The job that merges, started by SLURM once every one of `jobs` has ended."""
    folder = Path(tempfile.mkdtemp(prefix="merge-", dir=logs))
    options = replace(slurm or SlurmOptions(), gpus_per_task=None)
    ex = executor("slurm", folder, slurm=options, name=f"kvdirect-{model_name}-merge")
    ex.update_parameters(dependency="afterany:" + ":".join(_ids(jobs)))
    return ex.submit(merge_finished, model_name, size, list(claims), str(out))
