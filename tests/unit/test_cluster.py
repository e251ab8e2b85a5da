"""study/cluster.py and jobs.py: the study's shards as jobs through submitit. The local
executor end to end on the smoke study (two shards, one killed, reported with its log and
resubmitted alone, then claim 6's own job, merged, the tables those of a run in one
process), the SLURM path against stand-in sbatch / sacct / scancel / srun that run the jobs
here (tests/standins/slurm.py), several processes appending to one records file at once,
and the command line's checks of its flags."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kvdirect_interp import cli, study
from kvdirect_interp.study import cluster, jobs
from kvdirect_interp.study.store import ClaimStore
from tests.fixtures import tiny_model

# an optional dependency (extra `cluster`): skipped where not installed, except under CI
submitit = (
    importlib.import_module("submitit") if os.environ.get("CI") else pytest.importorskip("submitit")
)

MODEL = "tiny-llama"
STANDIN = Path(__file__).resolve().parents[1] / "standins" / "slurm.py"
WAIT_S = 300  # at most, for a shard's first record or a job's end


def keys(claim: int, shard=(0, 1)) -> list[str]:
    units = study.plan(MODEL, tiny_model(MODEL), claim, "smoke")
    return [u.key for u in study.shard_of(units, shard)]


def records(out: Path, claim: int) -> list[str]:
    """The keys recorded, in file order (a unit run twice: twice)."""
    return [r["key"] for r in ClaimStore(out, MODEL, claim).records()]


def recorded(out: Path, *claims: int) -> set[str]:
    return {k for c in claims for k in records(out, c)}


def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S}s for {what}"
        time.sleep(0.05)


def comparable(out: Path, claim: int) -> pd.DataFrame:
    """A claim's table less what differs between runs: when, where, how long."""
    units = study.plan(MODEL, tiny_model(MODEL), claim, "smoke")
    df = study.table(MODEL, claim, units, out)
    where = set(ClaimStore(out, MODEL, claim).records()[0]["provenance"])
    return df.drop(columns=[c for c in df.columns if c in where or c == "unit_seconds"])


def test_local_shards_killed_resumed_and_merged_as_one_process_would(tmp_path, capsys):
    out, ref = (tmp_path / "cluster").resolve(), tmp_path / "one"
    array, alone = cluster.waves([3, 5, 6], 2, "local")
    assert [str(t) for t in array + alone] == [
        "shard 0/2 of claims 3,5",
        "shard 1/2 of claims 3,5",
        "shard 0/1 of claims 6",  # after the others: nothing beside its timings
    ]
    # the two shards as local processes; shard 0 killed once its first unit is recorded
    submitted = jobs.submit(
        MODEL, "smoke", array, out=out, kind="local", logs=out / "logs", threads=1
    )
    first = {k for c in (3, 5) for k in keys(c, (0, 2))}
    until(lambda: recorded(out, 3, 5) & first, "shard 0's first unit")
    submitted[0][1].cancel()  # SIGINT to its process, then SIGKILL
    failures = cluster.watch(submitted, poll_s=0.2)
    assert [f.task for f in failures] == [array[0]]
    assert failures[0].log == submitted[0][1].paths.stderr and failures[0].log.is_file()
    assert str(failures[0].log) in str(failures[0])
    assert first - recorded(out, 3, 5), "shard 0 finished before it was killed"
    assert {k for c in (3, 5) for k in keys(c, (1, 2))} <= recorded(out, 3, 5)
    # the same run again: shard 0 alone (shard 1 is finished), then claim 6, then the merge
    done = cluster.run(
        MODEL,
        "smoke",
        claims=[3, 5, 6],
        out=out,
        kind="local",
        shards=2,
        poll_s=0.2,
        threads=1,
    )
    assert [t for t, _ in done.jobs] == [array[0], *alone] and not done.failures
    total = sum(len(keys(c)) for c in (3, 5, 6))  # the bar: units recorded, read from the files
    assert os.environ.get("TQDM_DISABLE") or f"{total}/{total}" in capsys.readouterr().err
    for claim in (3, 5, 6):  # every unit once: none finished ran again
        assert sorted(records(out, claim)) == sorted(keys(claim))
    dates = {
        c: [r["provenance"]["date_utc"] for r in ClaimStore(out, MODEL, c).records()]
        for c in (3, 5, 6)
    }
    assert min(dates[6]) >= max(dates[3] + dates[5])  # claim 6 began when the others had ended
    assert sorted(done.merged) == [3, 5, 6]
    for claim, path in done.merged.items():
        assert path == out / MODEL / f"claim{claim}.parquet"
        assert set(pd.read_parquet(path).unit_key) == set(keys(claim))
    # the tables of one process on as many threads, but for when, where and how long
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load = lambda _: tiny_model(MODEL)  # claims 3 and 5 run in float32 only
        study.run_study(MODEL, "smoke", claims=[3, 5], out=ref, load=load, progress=False)
    finally:
        torch.set_num_threads(old)
    for claim in (3, 5):
        pd.testing.assert_frame_equal(comparable(out, claim), comparable(ref, claim))


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """sbatch, sacct, scancel and srun on PATH that run the jobs here; their state folder."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name in ("sbatch", "sacct", "scancel", "srun"):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" {name} "$@"\n')
        path.chmod(0o755)
    # job ids of their own: submitit's watcher remembers the states of ids it has seen
    (state / "next_id").write_text(str(random.randrange(10**6, 10**8)))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_SLURM_DIR", str(state))
    monkeypatch.setattr(cluster, "POLL_S", 0.2)
    # sacct every second at most (submitit waits up to 10 min between calls on a cluster)
    monkeypatch.setattr(submitit.SlurmJob.watcher, "_delay_s", 1)
    yield state
    # nothing left running (a failed test): the groups of the tasks and runners not ended
    ended = ("COMPLETED", "FAILED", "CANCELLED")
    for path in [*state.glob("*.pgid"), *state.glob("*.runner")]:
        tasks = [path.stem] if path.suffix == ".pgid" else [path.stem, f"{path.stem}_*"]
        states = [s for task in tasks for s in state.glob(f"{task}.state")]
        if any(s.read_text() not in ended for s in states):
            try:
                os.killpg(int(path.read_text()), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_slurm_array_through_standin_commands(slurm, tmp_path, capsys):
    out = tmp_path / "out"
    options = jobs.SlurmOptions(partition="cpu", time=30, cpus_per_task=1, extra={"account": "kv"})
    wave = cluster.waves([5, 6], 2, "slurm")[0]
    assert [str(t) for t in wave] == [
        "shard 0/2 of claims 5",
        "shard 1/2 of claims 5",
        "shard 0/1 of claims 6",
    ]
    logs = tmp_path / "logs"
    submitted = jobs.submit(
        MODEL, "smoke", wave, out=out.resolve(), kind="slurm", logs=logs, slurm=options
    )
    scripts = [json.loads(p.read_text())["options"] for p in sorted(slurm.glob("*.json"))]
    array, alone = scripts
    assert array["array"] == "0-1%2" and "exclusive" not in array
    assert alone["exclusive"] is True and "array" not in alone  # claim 6: a node of its own
    for opts in scripts:
        assert (opts["partition"], opts["time"], opts["account"]) == ("cpu", "30", "kv")
        assert opts["cpus-per-task"] == "1"
    first = set(keys(5, (0, 2)))
    until(lambda: recorded(out, 5) & first, "shard 0's first unit")
    submitted[0][1].cancel()  # scancel <array>_0
    failures = cluster.watch(submitted, poll_s=0.2)
    assert [(f.task, f.state) for f in failures] == [(wave[0], "CANCELLED")]
    assert failures[0].log == submitted[0][1].paths.stderr and failures[0].log.is_file()
    assert first - recorded(out, 5), "shard 0 finished before it was cancelled"
    # submitted again, not waiting: only shard 0 runs, and a last job merges after it
    argv = ["study", "--model", MODEL, "--size", "smoke", "--claims", "5", "6"]
    argv += ["--out", str(out), "--executor", "slurm", "--shards", "2", "--no-wait"]
    argv += ["--slurm-partition", "cpu", "--slurm-time", "30", "--slurm-extra", "account=kv"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "shard 0/2 of claims 5: job" in text and "merge job" in text
    assert "shard 1/2" not in text and "claims 6:" not in text
    merge_id = text.split("merge job ")[1].split()[0]
    until(lambda: (slurm / f"{merge_id}.state").read_text() in ("COMPLETED", "FAILED"), "merge")
    assert (slurm / f"{merge_id}.state").read_text() == "COMPLETED"
    assert sorted(records(out, 5)) == sorted(keys(5))  # none finished ran again
    for claim in (5, 6):
        assert set(pd.read_parquet(out / MODEL / f"claim{claim}.parquet").unit_key) == set(
            keys(claim)
        )


def _append(out: Path, worker: int, n: int, barrier) -> None:
    store = ClaimStore(out, MODEL, 3)
    barrier.wait()
    for i in range(n):  # lines longer than a write buffer (8 KiB)
        store.append({"key": f"{worker}-{i}", "rows": [{"pad": "x" * 20_000}]})


def test_processes_appending_at_once_lose_nothing_and_a_cut_line_is_cut(tmp_path):
    store = ClaimStore(tmp_path, MODEL, 3)
    store.append({"key": "before", "rows": []})
    with open(store.path, "a") as f:
        f.write('{"key": "cut", "rows": [')  # a run killed while writing
    ctx = multiprocessing.get_context("fork")  # the children need no fresh imports
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_append, args=(tmp_path, w, 25, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    expected = ["before"] + [f"{w}-{i}" for w in range(4) for i in range(25)]
    assert sorted(records(tmp_path, 3)) == sorted(expected)
    assert store.path.read_text().count("\n") == len(expected)


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--shards", "2"], "--shards needs --executor local or slurm"),
        (["--slurm-time", "9"], "--slurm-time needs --executor slurm"),
        (["--executor", "local", "--shard", "0/2"], "--shard runs one shard here"),
        (["--executor", "local", "--merge"], "--merge merges here"),
        (["--executor", "local", "--slurm-partition", "a"], "--slurm-partition needs --executor"),
        (["--executor", "local", "--no-wait"], "--no-wait needs --executor slurm"),
        (["--executor", "slurm", "--shards", "0"], "--shards must be at least 1"),
        (["--executor", "slurm", "--slurm-extra", "account"], "--slurm-extra takes KEY=VALUE"),
        (["--executor", "pbs"], "invalid choice: 'pbs'"),
    ],
)
def test_the_executor_flags_are_checked_together(flags, problem, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["study", "--model", MODEL, "--size", "smoke", *flags])
    assert exc.value.code == 2 and problem in capsys.readouterr().err


def test_missing_submitit_or_slurm_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'kvdirect_interp\[cluster\]'"):
        jobs.load_submitit()
    argv = ["study", "--model", MODEL, "--size", "smoke", "--executor", "local"]
    with pytest.raises(SystemExit, match=r"kvdirect_interp\[cluster\]"):
        cli.main(argv)
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(RuntimeError, match="needs SLURM's commands"):
        jobs.executor("slurm", tmp_path)
    with pytest.raises(SystemExit, match="needs SLURM's commands"):
        cli.main([*argv[:-1], "slurm"])


def test_local_jobs_see_the_gpus_this_process_sees(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # submitit would set it to none
    params = jobs.executor("local", tmp_path).parameters
    assert (params["gpus_per_node"], params["visible_gpus"]) == (2, [2, 3])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5e3f")  # a UUID cannot be passed on
    assert "visible_gpus" not in jobs.executor("local", tmp_path).parameters
