"""Stand-ins for SLURM's sbatch, sacct, scancel and srun that run the jobs on this machine,
for the tests of `study --executor slurm` (tests/unit/test_cluster.py puts commands of those
names that call this file on PATH). They speak what submitit writes and reads: the #SBATCH
lines of its scripts (array, output, error, dependency=afterany), sbatch's "Submitted batch
job N", sacct's --parsable2 table, scancel of a job or one array task, srun's --output and
--error patterns. Their state is in $STANDIN_SLURM_DIR: per job <id>.json (its options and
script), per task <id>[_<i>].state and .pgid (the process group it runs in).

    slurm.py sbatch SCRIPT | sacct -o ... -j ID ... | scancel [--signal SIG] ID ... | srun ...
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["STANDIN_SLURM_DIR"])
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def _next_id() -> int:
    with open(STATE / "next_id", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 1000) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    return n


def _name(job: int | str, task: int | None) -> str:
    return str(job) if task is None else f"{job}_{task}"


def _set(name: str, state: str) -> None:
    (STATE / f"{name}.state").write_text(state)


def _get(name: str) -> str | None:
    path = STATE / f"{name}.state"
    return path.read_text() if path.exists() else None


def _tasks(job_id: str) -> list[str]:
    """The task names an id means: "N_i" itself, "N" the job or all its array tasks."""
    if "_" in job_id:
        return [job_id] if _get(job_id) is not None else []
    found = [p.stem for p in STATE.glob(f"{job_id}_*.state")]
    return found or ([job_id] if _get(job_id) is not None else [])


def sbatch(script: str) -> None:
    text = Path(script).read_text()
    options: dict[str, str | bool] = {}
    for line in text.splitlines():
        if m := re.match(r"#SBATCH --([\w-]+)(?:=(.*))?$", line):
            options[m[1]] = True if m[2] is None else m[2].strip("'")
    job = _next_id()
    tasks: list[int | None] = [None]
    parallel = 1
    if isinstance(options.get("array"), str):
        spec, _, limit = options["array"].partition("%")
        lo, _, hi = spec.partition("-")
        tasks = list(range(int(lo), int(hi or lo) + 1))
        parallel = int(limit or len(tasks))
    meta = {"options": options, "text": text, "tasks": tasks, "parallel": parallel}
    (STATE / f"{job}.json").write_text(json.dumps(meta))
    for task in tasks:
        _set(_name(job, task), "PENDING")
    runner = subprocess.Popen(
        [sys.executable, __file__, "_run", str(job)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (STATE / f"{job}.runner").write_text(str(runner.pid))
    print(f"Submitted batch job {job}")


def _pattern(path: str, job: int, task: int | None) -> str:
    return path.replace("%A", str(job)).replace("%a", str(task)).replace("%j", str(job))


def _run(job: int) -> None:
    """The scheduler of one job: wait for its dependencies, then run its tasks, at most
    `parallel` at once, each as `bash SCRIPT` in a process group of its own."""
    meta = json.loads((STATE / f"{job}.json").read_text())
    options = meta["options"]
    if dependency := options.get("dependency"):
        kind, *ids = dependency.split(":")
        assert kind == "afterany", f"the stand-in knows afterany only, not {kind}"
        while not all(_get(t) in ENDED for i in ids for t in _tasks(i)):
            time.sleep(0.2)
    script = STATE / f"{job}.sh"
    script.write_text(meta["text"])
    queue, running = list(meta["tasks"]), {}
    while queue or running:
        for task, proc in list(running.items()):
            if proc.poll() is not None:
                if _get(_name(job, task)) != "CANCELLED":
                    _set(_name(job, task), "COMPLETED" if proc.returncode == 0 else "FAILED")
                del running[task]
        while queue and len(running) < meta["parallel"]:
            task = queue.pop(0)
            name = _name(job, task)
            if _get(name) == "CANCELLED":
                continue
            env = dict(
                os.environ,
                SLURM_JOB_ID=str(job),
                SLURM_NTASKS="1",
                SLURM_PROCID="0",
                SLURM_LOCALID="0",
                SLURM_NODEID="0",
                SLURM_JOB_NUM_NODES="1",
                SLURM_JOB_NODELIST="localhost",
            )
            if task is not None:
                env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(task))
            out = _pattern(options["output"], job, task)
            err = _pattern(options.get("error", options["output"]), job, task)
            with open(out, "a") as o, open(err, "a") as e:
                proc = subprocess.Popen(
                    ["bash", str(script)], env=env, stdout=o, stderr=e, start_new_session=True
                )
            _set(name, "RUNNING")
            (STATE / f"{name}.pgid").write_text(str(proc.pid))
            running[task] = proc
        time.sleep(0.1)


def sacct(args: list[str]) -> None:
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job_id in ids:
        for name in _tasks(job_id):
            print(f"{name}|{_get(name)}|localhost")


def scancel(args: list[str]) -> None:
    sig = None
    if "--signal" in args:
        i = args.index("--signal")
        sig = getattr(signal, "SIG" + args[i + 1].removeprefix("SIG"))
        args = args[:i] + args[i + 2 :]
    for job_id in args:
        for name in _tasks(job_id):
            pgid = STATE / f"{name}.pgid"
            if sig is None:  # a cancel: SLURM ends with SIGKILL (submitit ignores SIGTERM)
                _set(name, "CANCELLED")
            if pgid.exists():
                try:
                    os.killpg(int(pgid.read_text()), sig or signal.SIGKILL)
                except ProcessLookupError:
                    pass


def srun(args: list[str]) -> None:
    """Run the command with its output and error appended to the files named (submitit's
    patterns: %A, %a, %j, %t)."""
    files, i = {}, 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("--output", "--error"):
            files[args[i]] = args[i + 1]
            i += 2
        else:  # a flag: --unbuffered
            i += 1
    env = os.environ
    for flag, fd in (("--output", 1), ("--error", 2)):
        if flag in files:
            path = files[flag].replace("%A", env.get("SLURM_ARRAY_JOB_ID", ""))
            path = path.replace("%a", env.get("SLURM_ARRAY_TASK_ID", ""))
            path = path.replace("%j", env["SLURM_JOB_ID"]).replace("%t", env["SLURM_PROCID"])
            f = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(f, fd)
    os.execvp(args[i], args[i:])


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "sbatch":
        sbatch(rest[-1])
    elif command == "_run":
        _run(int(rest[0]))
    else:
        {"sacct": sacct, "scancel": scancel, "srun": srun}[command](rest)
