"""The main job (`kvdirect-interp verify --json`) on the default model, run once as the
command line runs it: every verdict it prints is the verdict function of its claim applied
here, independently, to the inputs it wrote to its own JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kvdirect_interp import verdicts as vd
from kvdirect_interp.models import DEFAULT_MODEL
from tests.fixtures import packaged_model

pytestmark = pytest.mark.integration


def reapplied(entry: dict) -> vd.Verdict:
    """The claim's verdict function applied to the inputs in its JSON entry."""
    i = entry["inputs"]
    frame = lambda key: pd.DataFrame(i[key])
    number = entry["claim"].split()[0]
    if number == "1":
        return vd.claim1(frame("report"))
    if number == "2":
        return vd.claim2(
            kl_whole_max=i["kl_whole_max"],
            kl_single_position_max=i["kl_single_position_max"],
            layers=i["layers"],
            sites=i["sites"],
            task_pairs=i["task_pairs"],
        )
    if number == "3":
        return vd.claim3(frame("runs"), logit_noise=i["logit_noise"])
    if number == "4":
        return vd.claim4(frame("turns"), frame("bytes_per_token"), cost=frame("cost"))
    if number == "5":
        return vd.claim5(frame("agreement"), frame("intervals"), cost=frame("cost"))
    if number == "6":
        return vd.claim6(frame("timings"))
    raise AssertionError(f"unknown claim {entry['claim']!r}")


def printed_verdicts(out: str) -> dict[str, dict]:
    """claim -> {"verdict", "parts": [(held, name, measured)]} from verify's printout."""
    found = {}
    for block in re.split(r"\n(?=Claim )", out):
        if not block.startswith("Claim "):
            continue
        lines = block.splitlines()
        claim = lines[0].removeprefix("Claim ")
        parts = [
            re.match(r"  part \[(held|not held)\] ([^:]+): (.*)$", line).groups()
            for line in lines
            if line.startswith("  part [")
        ]
        verdict = next(line.split(":", 1)[1].strip() for line in lines if "  verdict:" in line)
        found[claim] = {"verdict": verdict, "parts": parts}
    return found


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    packaged_model(DEFAULT_MODEL)  # skips where the default model is not installed (not in CI)
    path = tmp_path_factory.mktemp("verify") / "verify.json"
    cli = Path(sys.executable).with_name("kvdirect-interp")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "kvdirect_interp.cli"]
    done = subprocess.run(
        [*command, "verify", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout, json.loads(path.read_text())


def test_every_printed_verdict_is_its_function_applied_to_the_json(main_job):
    out, payload = main_job
    assert payload["model"] == DEFAULT_MODEL and payload["cpu"]
    entries = payload["verdicts"]
    assert [e["claim"].split()[0] for e in entries] == list("123456")
    printed = printed_verdicts(out)
    assert list(printed) == [e["claim"] for e in entries]
    for e in entries:
        again = reapplied(e)
        assert e["verdict"] == again.verdict == printed[e["claim"]]["verdict"], e["claim"]
        assert e["measured"] == again.measured and e["price"] == again.price
        assert [(p["name"], p["held"]) for p in e["parts"]] == [
            (p.name, p.held) for p in again.parts
        ]
        assert printed[e["claim"]]["parts"] == [
            ("held" if p.held else "not held", p.name, p.measured) for p in again.parts
        ]
    # the summary table at the end says the same
    for e in entries:
        assert re.search(rf"{re.escape(e['claim'])}\s+{re.escape(e['verdict'])}\s*$", out, re.M)


def test_the_json_carries_what_every_machine_must_reproduce(main_job):
    _, payload = main_job
    by = {e["claim"].split()[0]: e for e in payload["verdicts"]}
    assert by["1"]["parts"][0]["held"]  # same-shape rebuild bitwise on every layer
    assert by["2"]["inputs"]["kl_whole_max"] == 0.0 and by["2"]["verdict"] == vd.HOLDS
    rows = pd.DataFrame(by["5"]["inputs"]["agreement"])
    kvd = rows[rows.policy.str.startswith("KVDirect")]
    assert (kvd.token_match == 1.0).all() and kvd.logits_bitwise.all()
    # SmolLM2 is grouped-query: every_layer and min_bytes never hold fewer bytes than FullKV
    assert by["5"]["numbers"]["modes_without_saving"] == [
        "KVDirect[every_layer]",
        "KVDirect[min_bytes]",
    ]
    assert by["4"]["verdict"] == vd.CONDITIONAL  # only the re-prefill mode bounds memory
