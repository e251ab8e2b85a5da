import json

import pandas as pd
import pytest

from kvdirect_interp import cli, verify
from kvdirect_interp import verdicts as vd
from kvdirect_interp.experiments import load_data
from tests.fixtures import tiny_model


def rejudged(c: verify.Check) -> vd.Verdict:
    """The claim's verdict function applied, here, to the inputs the check recorded."""
    i = json.loads(json.dumps(c.inputs))  # what --json would hold
    frame = lambda key: pd.DataFrame(i[key])
    return {
        "1": lambda: vd.claim1(frame("report")),
        "2": lambda: vd.claim2(
            kl_whole_max=i["kl_whole_max"],
            kl_single_position_max=i["kl_single_position_max"],
            layers=i["layers"],
            sites=i["sites"],
            task_pairs=i["task_pairs"],
        ),
        "3": lambda: vd.claim3(frame("runs"), logit_noise=i["logit_noise"]),
        "4": lambda: vd.claim4(frame("turns"), frame("bytes_per_token"), cost=frame("cost")),
        "5": lambda: vd.claim5(frame("agreement"), frame("intervals"), cost=frame("cost")),
        "6": lambda: vd.claim6(frame("timings")),
    }[c.claim]()


@pytest.fixture(scope="module")
def checks():
    model = tiny_model("tiny-llama")
    prompts = load_data("prompts.json")["prompts"]
    clean, donor = verify._equal_length_pair(model, load_data("patch_pairs.json")["texts"])
    return model, [
        verify.claim1(model, prompts[0]),
        verify.claim2(model, clean, donor),
        verify.claim3(model, "Once upon a time", 4),
        verify.claim4(model, turns=2, n_new=4, window=8),
        verify.claim5(model, prompts[:1], budgets=(8,), n_new=4),
        verify.claim6(model, n_tokens=(8, 16), batch_sizes=(1,), repeats=1),
    ]


def test_each_check_is_its_verdict_function_applied_to_what_it_measured(checks):
    model, checks = checks
    assert [c.claim for c in checks] == list("123456")
    for c in checks:
        again = rejudged(c)
        assert (c.verdict.verdict, c.verdict.measured, c.verdict.parts, c.verdict.price) == (
            again.verdict,
            again.measured,
            again.parts,
            again.price,
        ), c.claim
        assert c.verdict.claim.startswith(c.claim) and c.verdict.verdict in vd.OUTCOMES
        assert json.loads(json.dumps(c.as_json()))["inputs"] == c.inputs
    by = {c.claim: c for c in checks}
    # what a tiny model must give on any machine: same-shape rebuild bitwise, whole-residual
    # patching KL exactly 0, KV-Direct's tokens FullKV's (its logits are the same bits)
    assert by["1"].verdict.parts[0].held and by["1"].verdict.verdict != vd.FAILS
    assert by["2"].inputs["kl_whole_max"] == 0.0 and by["2"].verdict.verdict == vd.HOLDS
    assert "by construction" in by["2"].verdict.measured
    rows = pd.DataFrame(by["5"].inputs["agreement"])
    kvd = rows[rows.policy.str.startswith("KVDirect")]
    assert (kvd.token_match == 1.0).all() and kvd.logits_bitwise.all()
    assert set(kvd.policy) == {f"KVDirect[{m}]" for m in vd.KVDIRECT_MODES}
    assert by["5"].verdict.parts[0].held
    turns = pd.DataFrame(by["4"].inputs["turns"])
    assert set(turns.policy) == {"FullKV", "KVDirect[every_layer]", "KVDirect[token_ids]"}
    runs = pd.DataFrame(by["3"].inputs["runs"])
    assert len(runs) == 1 and by["3"].inputs["logit_noise"] >= 0
    assert len(by["6"].inputs["timings"]) == 2
    # the streaming replay's row says so; the price names the FLOPs formula's ratio
    assert set(turns.replay.dropna()) == {"streaming"}
    assert "FullKV's FLOPs per step" in by["4"].verdict.price or by["4"].verdict.verdict == vd.FAILS
    table = verify.table(checks)
    assert list(table.columns) == ["claim", "paper", "verdict", "price", "measured"]


def test_a_changed_input_changes_the_verdict_the_check_reports(checks):
    # the verdict is computed from the inputs, not typed: faking a faster rebuild moves it
    _, checks = checks
    c6 = checks[5]
    fast = [
        r | {"rebuild_s": r["read_s"] / 10, "rebuild_over_read": 0.1} for r in c6.inputs["timings"]
    ]
    assert verify.JUDGES["6"]({"timings": fast}).verdict == vd.HOLDS
    c2 = checks[1]
    assert verify.JUDGES["2"](c2.inputs | {"kl_whole_max": 1e-9}).verdict == vd.FAILS


def test_cli_verify_prints_each_part_and_writes_the_inputs(checks, monkeypatch, tmp_path, capsys):
    model, checks = checks
    monkeypatch.setattr(cli, "load_model", lambda name: model)
    monkeypatch.setattr(verify, "run", lambda m: checks)
    out = tmp_path / "v.json"
    assert cli.main(["verify", "--model", "tiny-llama", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for c in checks:
        assert f"verdict:  {c.verdict.verdict}" in text
        for p in c.verdict.parts:
            assert f"{p.name}: {p.measured}" in text
    payload = json.loads(out.read_text())
    assert [v["verdict"] for v in payload["verdicts"]] == [c.verdict.verdict for c in checks]
    assert [v["inputs"] for v in payload["verdicts"]] == [c.inputs for c in checks]
    assert payload["cpu"] and payload["threads"] >= 1


def test_cli_models_lists_names(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "tiny-neox" in out


def test_cli_bench_hands_its_arguments_to_the_benchmark_script(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    assert "usage: kvdirect-interp bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--model", "no-such-model"])
    assert exit_.value.code == 2
    assert "invalid choice: 'no-such-model'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["models", "--quick"])  # other commands still refuse unknown arguments
