"""The verdict table across models (OUT/README.md): one column per studied model, written
by every merge between its markers, and the committed one is what the committed tables give."""

from __future__ import annotations

import shutil

import pytest

from kvdirect_interp import FullKV, KVDirect, results, study
from kvdirect_interp.study import figure, paper, report
from tests.fixtures import tiny_model

MODEL = "tiny-llama"


def load(dtype: str):
    return tiny_model(MODEL)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    study.run_study(MODEL, "smoke", out=out, load=load, progress=False)
    study.merge(MODEL, "smoke", out=out, model=tiny_model(MODEL))
    return out


def test_the_merge_writes_every_studied_models_verdicts_side_by_side(merged, tmp_path):
    text = (merged / "README.md").read_text()
    assert text.count(report.MATRIX_BEGIN) == 1 and text.count(report.MATRIX_END) == 1
    verdicts = results.stored_verdicts(MODEL, root=merged, size="smoke")
    for row in verdicts.itertuples():
        price = f": {row.price}" if row.price else ""
        assert f"| {row.claim} | {row.slice} | {row.verdict} ({row.units}){price} |" in text
    # a second model with only claim 6 stored: its other claims say so, in their rows
    out = tmp_path / "two"
    shutil.copytree(merged, out)
    gpt2 = tiny_model("tiny-gpt2")
    study.run_study("tiny-gpt2", "smoke", claims=[6], out=out, load=lambda _: gpt2, progress=False)
    study.merge("tiny-gpt2", "smoke", claims=[6], out=out, model=gpt2)
    table = report.matrix(out, size="smoke").splitlines()
    assert table[0] == f"| claim | slice | {MODEL} | tiny-gpt2 |"
    theirs = results.stored_verdicts("tiny-gpt2", root=out, size="smoke").set_index("claim")
    ram = next(line for line in table if line.startswith("| 6 | ram |"))
    six = theirs.loc[6].set_index("slice").loc["ram"]
    assert ram.endswith(f"| {six.verdict} ({six.units}) |")
    one = next(line for line in table if line.startswith("| 1 | float32 |"))
    assert one.endswith(f"| not studied yet ({theirs.loc[1].units}) |")


def test_write_matrix_replaces_its_block_and_keeps_the_rest(merged, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(merged, out)
    readme = out / "README.md"
    stale = f"{report.MATRIX_BEGIN}\nSTALE\n{report.MATRIX_END}"
    readme.write_text(f"# Top\n\nbefore\n\n{stale}\n\nafter\n")
    report.write_matrix(out, size="smoke")
    text = readme.read_text()
    assert text.startswith("# Top\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "STALE" not in text and report.matrix(out, size="smoke") in text
    report.write_matrix(out, size="smoke")
    assert readme.read_text() == text  # idempotent
    readme.write_text("# no markers\n")
    report.write_matrix(out, size="smoke")
    assert readme.read_text().startswith("# no markers\n\n" + report.MATRIX_BEGIN)


def test_the_committed_verdict_table_is_what_the_committed_tables_give():
    root = results.results_dir()
    text = (root / "README.md").read_text()
    block = text.split(report.MATRIX_BEGIN, 1)[1].split(report.MATRIX_END, 1)[0]
    assert block.strip() == report.matrix(root).strip(), (
        "results/README.md's verdict table is out of date: run "
        "`kvdirect-interp study --model NAME --size full --merge` (it rewrites the table)"
    )


def test_a_resumed_units_time_adds_the_turns_of_its_earlier_parts():
    # a chat stopped after turn 2 and resumed: the record's seconds are the second call's
    rows = [
        {"turn": 1, "seconds": 10.0, "part": 0},
        {"turn": 2, "seconds": 20.0, "part": 0},
        {"turn": 3, "seconds": 40.0, "part": 1},
    ]
    assert report.unit_seconds({"seconds": 41.5, "rows": rows}) == 71.5
    # a unit measured in one call, with or without a part column, is its record's seconds
    assert report.unit_seconds({"seconds": 12.0, "rows": [{"turn": 1, "seconds": 11.0}]}) == 12.0
    assert report.unit_seconds({"seconds": 3.0, "rows": []}) == 3.0


def test_the_readme_puts_the_papers_figures_beside_the_committed_tables():
    readme = results.results_dir().parent / "README.md"
    text = readme.read_text()
    block = text.split(paper.BEGIN, 1)[1].split(paper.END, 1)[0]
    assert block.strip() == paper.table(results.results_dir(), short=True).strip(), (
        "README.md's paper-beside-ours table is out of date: run "
        "`kvdirect-interp study --model NAME --size full --merge` (it rewrites the table)"
    )
    # every claim has a row with the paper's figure, and every studied model a column
    lines = block.strip().splitlines()
    assert (
        lines[0]
        == "| claim | the paper | " + " | ".join(report.studied(results.results_dir())) + " |"
    )
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {c}" for c in paper.PAPER]


def test_the_paper_table_is_written_from_the_verdicts(merged, tmp_path):
    table = paper.table(merged, size="smoke")
    rows = {r["claim"]: r for r in results.stored_verdict_rows(MODEL, root=merged, size="smoke")}
    for claim, line in zip(paper.PAPER, table.splitlines()[2:], strict=True):
        v = rows[claim]["verdict"]
        assert paper.PAPER[claim] in line and f"**{v.headline()}**" in line
    # the README's form: each slice's verdict, and its price once
    short = paper.table(merged, size="smoke", short=True)
    for claim, line in zip(paper.PAPER, short.splitlines()[2:], strict=True):
        v = rows[claim]["verdict"]
        assert paper.PAPER[claim] in line and f"**{v.verdict}**" in line
        if v.price:  # its first letter is capitalised as it opens a sentence there
            assert line.count(v.price[1:]) == 1
    readme = tmp_path / "README.md"
    readme.write_text("# Top\n")
    paper.write(readme, merged, size="smoke")
    assert readme.read_text() == f"# Top\n\n{paper.BEGIN}\n{short}\n{paper.END}\n"


def test_the_summary_figure_is_what_the_committed_tables_draw(tmp_path):
    root = results.results_dir()
    drawn = figure.draw(root, tmp_path / "summary.svg")
    committed = root.parent / figure.FIGURE
    assert drawn.read_text() == committed.read_text(), (
        f"{figure.FIGURE} is out of date: run `kvdirect-interp study --model NAME --size full "
        "--merge` (it redraws the figure)"
    )


def test_the_price_reads_todays_flops_formula():
    """Claim 6's stored GFLOPs column is the formula of the run's commit; the price of claims
    4 and 5 takes FullKV's, NoCache's and KV-Direct's from today's formula (the replay no
    longer pays the unembedding of replayed tokens), and keeps the others as stored."""
    table = results.load("smollm2-135m", 6)
    if table is None:
        pytest.skip("SmolLM2's claim 6 is not in results/")
    arch = results.facts("smollm2-135m").arch
    cost = results.claim6_cost(table, arch).set_index(["policy", "context"]).flops_per_step
    stored = results.claim6_decode(table).set_index(["policy", "context"]).gflops_per_step * 1e9
    # the last decode step at 1,024 tokens: a 1,008-token prompt, 16 new tokens
    replay = KVDirect(64, checkpoint="token_ids").step_flops(arch, 1022, prompt=1008)
    assert cost[("KVDirect[token_ids]", 1024)] == replay < stored[("KVDirect[token_ids]", 1024)]
    assert cost[("FullKV", 1024)] == FullKV().step_flops(arch, 1022)
    assert cost[("SnapKV", 1024)] == stored[("SnapKV", 1024)]  # stored: the per-step rule
