import json

import pytest

from kvdirect_interp import cli, verify
from kvdirect_interp.experiments import load_data
from tests.fixtures import tiny_model


def test_each_claim_check_returns_a_verdict():
    model = tiny_model("tiny-llama")
    prompts = load_data("prompts.json")["prompts"]
    clean, donor = verify._equal_length_pair(model, load_data("patch_pairs.json")["texts"])
    checks = [
        verify.claim1(model, prompts[0]),
        verify.claim2(model, clean, donor),
        verify.claim3(model, "Once upon a time", 4),
        verify.claim4(model, turns=2, n_new=4, window=8),
        verify.claim5(model, prompts[:1], budgets=(8,), n_new=4),
    ]
    for v in checks:
        assert v.verdict in (verify.HOLDS, verify.CONDITIONAL, verify.FAILS)
        assert v.paper and v.measured and json.dumps(v.numbers, default=float)
    assert checks[0].numbers["same_shape_bitwise_layers"] == model.cfg.n_layers
    assert checks[1].numbers["kl_full_patch_max"] == 0.0 and checks[1].verdict == verify.HOLDS
    assert checks[4].numbers["kvdirect_token_match"] == 1.0
    table = verify.table(checks)
    assert list(table.columns) == ["claim", "paper", "measured", "verdict"]


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
