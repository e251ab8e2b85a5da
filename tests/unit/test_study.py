"""The study runner on a tiny model: smoke for every claim, nothing recomputed on a rerun,
a killed run's cut line re-measured alone, shards that add up to the plan, one merged table
per claim with provenance on every row, and the `study` command line."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from kvdirect_interp import cli, load_model, study, verify
from kvdirect_interp import experiments as ex
from kvdirect_interp.metrics import bootstrap_ci
from kvdirect_interp.policies import registry
from kvdirect_interp.study.plan import DECODE_POLICIES, baseline_budget
from kvdirect_interp.study.reproduce import RULES
from kvdirect_interp.study.store import ClaimStore
from kvdirect_interp.study.units import settings_hash
from tests.fixtures import tiny_model

MODEL = "tiny-llama"
PROVENANCE = [
    "date_utc",
    "cpu",
    "torch_threads",
    "dtype",
    "torch_version",
    "transformers_version",
    "transformer_lens_version",
    "package_version",
    "git_commit",
]


def load(dtype: str):
    return tiny_model(MODEL) if dtype == "float32" else load_model(MODEL, dtype=torch.bfloat16)


def keys(claim: int, shard=(0, 1)) -> list[str]:
    units = study.plan(MODEL, tiny_model(MODEL), claim, "smoke")
    return [u.key for u in study.shard_of(units, shard)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    done = study.run_study(MODEL, "smoke", out=out, load=load, progress=False)
    return out, done


def test_smoke_measures_every_unit_of_every_claim(smoke):
    out, done = smoke
    planned = [k for c in study.CLAIMS for k in keys(c)]
    assert done.ran == planned and not done.skipped
    assert sorted(done.seconds) == list(study.CLAIMS)
    for c in study.CLAIMS:
        records = ClaimStore(out, MODEL, c).records()
        assert [r["key"] for r in records] == keys(c) and len(keys(c)) >= 2
        assert all(r["rows"] and r["size"] == "smoke" for r in records)
    # claim 1 ran in both dtypes; claim 6 read from a file with the page cache dropped
    c1 = ClaimStore(out, MODEL, 1).records()
    assert {r["provenance"]["dtype"] for r in c1} == {"float32", "bfloat16"}
    row6 = ClaimStore(out, MODEL, 6).records()[0]["rows"][0]
    assert row6["disk_read_s"] > 0 and "POSIX_FADV_DONTNEED" in row6["disk_cache"]
    # what a tiny model gives on any machine: whole-residual patching is exact
    rows2 = [row for r in ClaimStore(out, MODEL, 2).records() for row in r["rows"]]
    assert all(row["kl_whole"] == 0.0 for row in rows2)


def test_a_rerun_recomputes_nothing(smoke):
    out, _ = smoke
    again = study.run_study(MODEL, "smoke", out=out, load=load, progress=False)
    assert again.ran == [] and again.skipped == [k for c in study.CLAIMS for k in keys(c)]


def test_a_killed_run_reruns_only_the_unit_it_was_writing(smoke, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(smoke[0], out)
    path = ClaimStore(out, MODEL, 6).path
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # cut mid-line
    assert ClaimStore(out, MODEL, 6).finished() == set(keys(6)[:-1])
    again = study.run_study(MODEL, "smoke", claims=[6], out=out, load=load, progress=False)
    assert again.ran == keys(6)[-1:] and again.skipped == keys(6)[:-1]
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == keys(6)


def test_a_broken_line_before_the_last_is_an_error(tmp_path):
    store = ClaimStore(tmp_path, MODEL, 3)
    for key in ("a", "b"):
        store.append({"key": key, "rows": []})
    text = store.path.read_text().splitlines()
    store.path.write_text(text[0][:5] + "\n" + text[1] + "\n")
    with pytest.raises(ValueError, match="line 1"):
        store.records()


def test_two_shards_make_the_whole_plan(smoke, tmp_path):
    for c in study.CLAIMS:
        a, b = keys(c, (0, 2)), keys(c, (1, 2))
        assert not set(a) & set(b) and sorted(a + b) == sorted(keys(c))
    for i in (0, 1):
        study.run_study(MODEL, "smoke", claims=[6], shard=(i, 2), out=tmp_path, load=load)
    assert ClaimStore(tmp_path, MODEL, 6).finished() == set(keys(6))
    assert study.parse_shard("1/2") == (1, 2) and study.parse_shard(None) == (0, 1)
    for bad in ("2/2", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError, match="0 <= i < n"):
            study.parse_shard(bad)


def test_merge_writes_one_table_per_claim_with_provenance_on_every_row(smoke):
    out, _ = smoke
    written = study.merge(MODEL, "smoke", out=out, model=tiny_model(MODEL))
    assert sorted(written) == list(study.CLAIMS)
    for c, path in written.items():
        assert path == out / MODEL / f"claim{c}.parquet"
        df = pd.read_parquet(path)
        assert len(df) and set(df.unit_key) == set(keys(c)), c
        assert df[PROVENANCE].notna().all().all(), c
        assert (df.package_version == study.package_version()).all()
    assert len(pd.read_parquet(written[4]).query("policy == 'FullKV'")) == 2  # one per turn


def test_a_key_changes_with_any_setting_and_the_version():
    s = {"prompt": 0, "budget": 16}
    assert settings_hash(s, "0.1.0") == settings_hash({"budget": 16, "prompt": 0}, "0.1.0")
    assert settings_hash(s, "0.1.0") != settings_hash(s | {"budget": 32}, "0.1.0")
    assert settings_hash(s, "0.1.0") != settings_hash(s, "0.2.0")
    unit = study.Unit(MODEL, 5, s)
    assert unit.key.startswith(f"{MODEL}/claim5/") and len(unit.key.rsplit("/", 1)[1]) == 12


def test_the_full_plan_has_the_issue_sizes():
    model = tiny_model(MODEL)
    full = {c: study.plan(MODEL, model, c, "full") for c in study.CLAIMS}
    assert len(full[1]) == 16  # 8 prompts x fp32, bf16
    assert len({(u.settings["clean"][0], u.settings["donor"][0]) for u in full[2]}) >= 10
    assert len(full[3]) == 16 * 4 and {u.settings["new_tokens"] for u in full[3]} == {64}
    assert {u.settings["policy"] for u in full[4]} == {"FullKV"} | set(ex.KVDIRECT_MODES)
    # claim 5: every baseline at every budget on 16 prompts of 256-1021 tokens, 48 new
    long = [u.settings for u in full[5] if u.settings.get("source") == "long_context"]
    five = [u.settings for u in full[5] if "source" not in u.settings]
    assert len(long) + len(five) == len(full[5])
    grid = {(s["prompt"], s["budget"], s["policy"]) for s in five}
    budgets = [16, 32, 64, 128, 256]
    prompts = {s["prompt"]: s["tokens"] for s in five}
    assert prompts == {i: 256 + 51 * i for i in range(16)}
    assert {s["new_tokens"] for s in five} == {48}
    for p in range(16):
        for b in budgets:
            assert {(p, b, name) for name in ex.BASELINES} <= grid
    # KV-Direct: the rebuild modes everywhere, the replay ones at corners (the issue allows it)
    kvd = {(s["prompt"], s["budget"], s["policy"]) for s in five if "KVDirect" in s["policy"]}
    rebuild = [m for m in ex.KVDIRECT_MODES if "every_layer" in m or "min_bytes" in m]
    replay = [m for m in ex.KVDIRECT_MODES if m not in rebuild]
    assert kvd == {(p, b, m) for p in range(16) for b in budgets for m in rebuild} | {
        (p, b, m) for p in (0, 15) for b in (16, 256) for m in replay
    }
    # equal memory: on the first 8 prompts, every baseline at each mode's equal budget
    for p in range(8):
        equal = study.equal_memory_budgets(model, prompts[p] + 48 - 1, budgets)
        assert equal  # some mode holds less than the full cache
        for b in equal.values():  # SnapKV at the budget that ends the run at those bytes
            assert {(p, baseline_budget(name, b, 48), name) for name in ex.BASELINES} <= grid
    assert len(five) == len(grid)  # no unit twice
    # SnapKV's units name their settings: the stored per-step units are not taken for them
    snap = [s for s in five if s["policy"] == "SnapKV"]
    assert snap and all(s["settings"]["observation_window"] == 32 for s in snap)
    # long context: 4 texts of 4,000 tokens, budgets 64-1,024, every baseline and
    # every_layer, token_ids on text 0 at 1,024
    cells = {(s["prompt"], s["budget"], s["policy"]) for s in long}
    names = [*ex.BASELINES, "KVDirect[every_layer]"]
    assert cells == {
        (p, b, n) for p in range(4) for b in (64, 128, 256, 512, 1024) for n in names
    } | {(0, 1024, "KVDirect[token_ids]")}
    assert {s["tokens"] for s in long} == {4000} and len(cells) == len(long)
    rebuild = [u for u in full[6] if u.settings.get("measure") != "decode"]
    assert {u.settings["tokens"] for u in rebuild} == {64, 128, 256, 512, 1024, 2048, 4096}
    assert full[6][: len(rebuild)] == rebuild  # the rebuild units keep their places
    decode = [u.settings for u in full[6][len(rebuild) :]]
    assert [d["context"] for d in decode] == [256, 1024]  # one unit per context
    for d in decode:  # every policy in turns, FullKV first (the ratios' reference)
        assert d["policies"] == list(DECODE_POLICIES) and d["policies"][0] == "FullKV"
        assert set(d["policies"]) <= set(registry.POLICIES)
        assert d["rounds"] == 3 and d["new_tokens"] == 16 and d["budget"] == 64


def test_the_measurement_functions_keep_their_defaults():
    model = tiny_model(MODEL)
    df = ex.rebuild_vs_read(model, n_tokens=(8,), batch_sizes=(1,), repeats=1)
    old = ["batch", "evicted_tokens", "rebuild_s", "read_s", "rebuild_over_read"]
    # a CUDA device adds the GPU tier (gpu=None: where one is present)
    gpu = ["gpu_rebuild_s", "h2d_read_s", "gpu_rebuild_over_h2d_read", "gpu"]
    assert list(df.columns) == old + (gpu if torch.cuda.is_available() else [])


def test_cli_study_runs_a_shard_then_merges(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "load_model", lambda name: tiny_model(name))
    args = ["study", "--model", MODEL, "--size", "smoke", "--claims", "6", "--out", str(tmp_path)]
    assert cli.main([*args, "--shard", "0/2"]) == 0
    assert "merge when every shard has finished" in capsys.readouterr().out
    assert cli.main([*args, "--shard", "1/2"]) == 0
    assert cli.main([*args, "--merge"]) == 0
    text = capsys.readouterr().out
    assert f"claim 6: {tmp_path / MODEL / 'claim6.parquet'}" in text
    assert set(pd.read_parquet(tmp_path / MODEL / "claim6.parquet").unit_key) == set(keys(6))


def test_verify_says_where_the_full_results_are(monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_model", lambda name: None)
    monkeypatch.setattr(verify, "run", lambda m: [])
    assert cli.main(["verify", "--model", MODEL]) == 0
    assert f"results/{MODEL}/" in capsys.readouterr().out


def test_the_dirty_flag_sees_a_changed_package_file(tmp_path):
    """git_state's dirty flag must see an uncommitted change to a package file (it once
    asked git about a path that did not exist and was never dirty)."""
    import shutil
    import subprocess

    from kvdirect_interp.study import provenance

    repo = tmp_path / "checkout"
    (repo / "kvdirect_interp").mkdir(parents=True)
    (repo / "kvdirect_interp" / "a.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)

    def state():
        provenance.git_state.cache_clear()
        old = provenance.PACKAGE_DIR
        provenance.PACKAGE_DIR = (repo / "kvdirect_interp").resolve()
        try:
            return provenance.git_state()
        finally:
            provenance.PACKAGE_DIR = old
            provenance.git_state.cache_clear()

    commit, dirty = state()
    assert len(commit) == 40 and dirty is False
    (repo / "kvdirect_interp" / "a.py").write_text("x = 2\n")
    assert state()[1] is True
    shutil.rmtree(repo / ".git")
    assert state() == ("unknown", None)


def test_stored_results_read_back_and_judged_per_tier(smoke, tmp_path):
    from kvdirect_interp import results
    from kvdirect_interp import verdicts as vd

    out, _ = smoke
    study.merge(MODEL, "smoke", out=out, model=tiny_model(MODEL))
    assert results.load(MODEL, 6, root=tmp_path) is None  # not studied there: says so
    table = results.load(MODEL, 6, root=out)
    assert table.attrs["path"].endswith(f"{MODEL}/claim6.parquet")
    line = results.run_of(table)
    assert "commit" in line and f"{len(table)} rows" in line
    tiers = results.claim6_tiers(table)
    rebuilds = table[table["measure"] == "rebuild_vs_read"]  # the decode rows aside
    assert sorted(tiers.tier.unique()) == ["disk", "ram"] and len(tiers) == 2 * len(rebuilds)
    disk = tiers[tiers.tier == "disk"]
    assert (disk.read_s.to_numpy() == rebuilds.disk_read_s.to_numpy()).all()
    for tier in ("ram", "disk"):
        v = vd.claim6(tiers[tiers.tier == tier])
        assert v.numbers["configurations"] == len(rebuilds)
    # end to end: every policy decoded at the smoke context, read against FullKV's speed
    decode = results.claim6_decode(table)
    assert sorted(decode.policy) == sorted(DECODE_POLICIES) and set(decode.context) == {24}
    assert (decode[decode.policy == "FullKV"].decode_vs_fullkv == 1).all()
    full = decode[decode.policy == "FullKV"]  # the side-by-side ratios' reference
    assert (full.vs_fullkv_min == 1).all() and (full.vs_fullkv_max == 1).all()
    assert (decode.rounds == 2).all() and decode.rounds.dtype.kind == "i"
    assert (decode.decode_tok_s > 0).all() and (decode.prefill_s > 0).all()
    assert decode.context.dtype.kind == "i" and "rebuild_s" not in decode.columns
    # a table stored before the decode rows existed still gives its tiers
    old = rebuilds.dropna(axis=1, how="all").drop(columns=["measure"])
    assert len(results.claim6_tiers(old)) == len(tiers) and results.claim6_decode(old).empty
    with pytest.raises(ValueError, match="provenance"):
        results.run_of(table.drop(columns=["cpu"]))


def test_the_merge_writes_the_run_record(smoke):
    out, _ = smoke
    study.merge(MODEL, "smoke", out=out, model=tiny_model(MODEL))
    text = (out / MODEL / "README.md").read_text()
    assert text.startswith(f"# Study of {MODEL} (smoke)")
    for claim in study.CLAIMS:
        n = len(study.plan(MODEL, tiny_model(MODEL), claim, "smoke"))
        assert f"| {claim} | " in text and f"| {n} / {n} |" in text


def test_the_full_claim4_plan_replays_in_one_chunk_and_rebuilds_exactly():
    units = study.plan(MODEL, tiny_model(MODEL), 4, "full")
    flags = [
        (u.settings["policy"], u.settings.get("exact_shapes"), u.settings.get("replay"))
        for u in units
    ]
    # the replay modes twice: one-shot (the stored units, no replay key) and streaming
    assert sorted(flags, key=str) == sorted(
        [
            ("FullKV", None, None),
            ("KVDirect[every_layer]", None, None),
            ("KVDirect[min_bytes]", None, None),
            ("KVDirect[first_layer]", False, None),
            ("KVDirect[first_layer]", False, "streaming"),
            ("KVDirect[token_ids]", False, None),
            ("KVDirect[token_ids]", False, "streaming"),
        ],
        key=str,
    )
    # the smoke plan keeps exact shapes everywhere (its chats are short)
    assert all("exact_shapes" not in u.settings for u in study.plan(MODEL, None, 4, "smoke"))


@pytest.fixture(scope="module")
def merged(smoke):
    out, _ = smoke
    study.merge(MODEL, "smoke", out=out, model=tiny_model(MODEL))
    return out


def test_stored_tables_feed_the_verdict_functions(merged):
    from kvdirect_interp import memory, results
    from kvdirect_interp import verdicts as vd
    from kvdirect_interp.policies import storage

    model = tiny_model(MODEL)
    reports = results.claim1_reports(results.load(MODEL, 1, root=merged))
    assert sorted(reports) == ["bfloat16", "float32"]
    assert all(vd.claim1(r).parts[0].held for r in reports.values())
    two = results.load(MODEL, 2, root=merged)
    v2 = vd.claim2(**results.claim2_inputs(two))
    assert v2.numbers["kl_whole_max"] == two.kl_whole.max() == 0.0
    assert v2.numbers["layers"] == model.cfg.n_layers
    three = results.load(MODEL, 3, root=merged)
    greedy, noise = results.claim3_runs(three)
    assert set(greedy["mode"]) == {"greedy"} and noise == three.noise.max() > 0
    assert vd.claim3(greedy, logit_noise=noise).numbers["runs"] == len(greedy)
    four = results.claim4_turns(results.load(MODEL, 4, root=merged))
    assert (four.transient_bytes == four.rebuilt_bytes_max).all()
    replays = four[four.policy.isin(["KVDirect[first_layer]", "KVDirect[token_ids]"])]
    assert set(replays.replay) == {"one_shot", "streaming"}
    assert four[~four.index.isin(replays.index)].replay.isna().all()
    v4 = vd.claim4(four, storage.bytes_per_token_table([memory.Shape.of(model)]))
    assert v4.verdict in vd.OUTCOMES
    # streaming builds one layer at a time: its transient is below the one-shot replay's
    one, streamed = (
        replays[replays.replay == r].rebuilt_bytes_max.max() for r in ("one_shot", "streaming")
    )
    assert 0 < streamed < one
    five = results.load(MODEL, 5, root=merged)
    grid = results.claim5_rows(five, budgets=[16])
    assert set(grid.budget) == {16} and len(grid) < len(five)  # equal-memory rows left out
    assert (grid.source == "long_prompts").all()
    iv = results.claim5_summary(grid[grid.policy.isin(list(ex.BASELINES))])
    assert vd.claim5(grid, iv).numbers["kvdirect_min_token_match"] == 1.0
    long = results.claim5_source(five, "long_context")
    assert set(long.prompt_tokens) == {64} and set(long.budget) == {12}
    slices = dict(results.judged(5, five, model))
    assert set(slices) == {"equal memory", "budget grid", "long context"}
    # at equal memory each baseline ran at the budget that ends the run at KV-Direct's bytes
    equal = results.claim5_equal_memory(five, memory.Shape.of(model))
    assert set(equal.policy) > {"SnapKV", "H2O"} and equal.matched.notna().all()
    planned = study.plan(MODEL, model, 5, "smoke")
    n = len(planned)
    assert results.units_done(five, planned) == f"{n}/{n} units"
    assert results.units_done(five.iloc[:0], planned) == f"0/{n} units"
    assert results.units_done(None, planned[:1]) == "0/1 units"
    assert results.same_machine(five)  # measured in this very process


@pytest.mark.parametrize(
    "claim, match",
    [
        (1, {"dtype": "float32", "prompt": 0}),
        (2, {"site": "resid_pre"}),
        (3, {"sampling": "greedy", "prompt": ["prompts", 0]}),
        (4, {"policy": "KVDirect[every_layer]"}),
        (5, {"policy": "H2O", "prompt": 0, "budget": 16}),
        (6, {"measure": "decode"}),
    ],
)
def test_a_stored_unit_measured_again_reproduces_its_rows(merged, claim, match):
    from kvdirect_interp import results

    table = results.load(MODEL, claim, root=merged)
    check = study.recheck(tiny_model(MODEL), MODEL, claim, table, **match)
    assert check.equal.all(), check
    assert set(check.column) >= set(RULES[claim]["exact"])


def test_a_decode_unit_measured_again_over_fewer_policies_and_rounds(merged):
    """What a notebook can afford: claim 6's end-to-end unit over two policies, one round;
    each fresh row is compared with its policy's stored row (bytes and FLOPs, not speed)."""
    from kvdirect_interp import results

    six = results.load(MODEL, 6, root=merged)
    few = {"policies": ["FullKV", "H2O"], "rounds": 1}
    check = study.recheck(tiny_model(MODEL), MODEL, 6, six, overrides=few, measure="decode")
    assert check.equal.all() and (check.rows == 2).all()
    assert "bytes_held" in set(check.column) and "decode_tok_s" not in set(check.column)


def test_a_chat_measured_again_over_its_first_turn_compares_that_turn(merged):
    from kvdirect_interp import results

    table = results.load(MODEL, 4, root=merged)
    check = study.recheck(
        tiny_model(MODEL), MODEL, 4, table, overrides={"turns": 1}, policy="FullKV"
    )
    assert check.equal.all() and (check.rows == 1).all()
    assert check.attrs["settings"]["turns"] == 1


def test_recheck_refuses_what_it_cannot_compare(merged):
    from kvdirect_interp import results

    five = results.load(MODEL, 5, root=merged)
    with pytest.raises(ValueError, match="stored units match"):
        study.stored_unit(five, policy="H2O")  # one per prompt and budget: ambiguous
    with pytest.raises(ValueError, match="0 stored units match"):
        study.stored_unit(five, policy="NoSuchPolicy")
    six = results.load(MODEL, 6, root=merged)
    with pytest.raises(ValueError, match="timings only"):
        study.recheck(tiny_model(MODEL), MODEL, 6, six, batch=1, tokens=16)
    settings, rows = study.stored_unit(five, policy="H2O", prompt=0, budget=16)
    with pytest.raises(ValueError, match="measured in bfloat16"):
        study.remeasure(tiny_model(MODEL), MODEL, 1, {**settings, "dtype": "bfloat16"})
    changed = rows.assign(token_match=rows.token_match / 2)
    out = study.compare(changed, rows, on=["policy", "budget"], exact=["token_match"])
    assert not out.equal.any() and out.max_abs_diff.iloc[0] > 0
    with pytest.raises(ValueError, match="no stored row"):
        study.compare(rows.assign(budget=99), rows, on=["policy", "budget"], exact=["token_match"])
    with pytest.raises(ValueError, match="lack column"):
        study.compare(rows, rows, on=["policy"], exact=["no_such_column"])


def test_stored_verdicts_judge_every_claim_and_say_what_is_missing(merged, tmp_path):
    from kvdirect_interp import results
    from kvdirect_interp import verdicts as vd

    model = tiny_model(MODEL)
    table = results.stored_verdicts(MODEL, model, root=merged, size="smoke")
    assert set(table.claim) == set(study.CLAIMS)
    assert set(table.verdict) <= set(vd.OUTCOMES)  # every claim judged on the smoke tables
    assert sorted(table[table.claim == 1].slice) == ["bfloat16", "float32"]
    assert sorted(table[table.claim == 6].slice) == ["disk", "ram"]
    n5 = len(study.plan(MODEL, model, 5, "smoke"))
    assert (table[table.claim == 5].units == f"{n5}/{n5} units").all()
    # the same verdicts as the functions give on the views
    four = results.load(MODEL, 4, root=merged)
    ((_, v4),) = results.judged(4, four, model)
    assert table[table.claim == 4].verdict.item() == v4.verdict
    # a model folder holding only a FullKV chat: claim 4 not judged, the rest not studied
    partial = tmp_path / "partial"
    (partial / MODEL).mkdir(parents=True)
    four[four.policy == "FullKV"].to_parquet(partial / MODEL / "claim4.parquet")
    table = results.stored_verdicts(MODEL, model, root=partial, size="smoke")
    assert table.verdict.isna().all()
    assert table[table.claim == 4].measured.item().startswith("not judged:")
    assert (table[table.claim != 4].measured == "not studied yet").all()
    text = (merged / MODEL / "README.md").read_text()
    assert "## Verdicts from the stored rows" in text and "| 5 | budget grid |" in text


def test_stored_tables_name_each_run_and_each_model_without_one(merged, capsys):
    from kvdirect_interp import results

    found = results.stored_tables(5, [MODEL, "no-such-model"], root=merged, size="smoke")
    assert list(found) == [MODEL]
    assert found[MODEL].equals(results.load(MODEL, 5, root=merged))
    out = capsys.readouterr().out.splitlines()
    n = len(study.plan(MODEL, tiny_model(MODEL), 5, "smoke"))
    assert out[0].startswith(f"{MODEL}: run ") and out[0].endswith(f"{n}/{n} units")
    assert out[1].startswith("no-such-model: no full-study table of claim 5 in")
    # the full plan has none of the smoke units: nothing of the table is shown as its own
    assert results.stored_tables(5, [MODEL], root=merged) == {}
    assert "holds no unit of today's plan" in capsys.readouterr().out
    # claims 1, 3, 4 and 6 plan without a model; 2 and 5 say they need one (or its facts)
    assert len(study.plan(MODEL, None, 3, "full")) > 0
    for claim in study.NEEDS_MODEL:
        with pytest.raises(ValueError, match="needs the loaded model or its ModelFacts"):
            study.plan(MODEL, None, claim, "full")


def test_a_study_keeps_its_models_facts_and_needs_no_model_to_be_read(merged, tmp_path):
    from kvdirect_interp import results
    from kvdirect_interp.cost import Arch
    from kvdirect_interp.memory import Shape

    model = tiny_model(MODEL)
    facts = results.facts(MODEL, root=merged)
    assert facts == study.ModelFacts.of(model, MODEL)  # written by the run, read back equal
    assert facts.shape == Shape.of(model) and facts.arch == Arch.of(model)
    assert facts.sites == tuple(
        s
        for s in ("resid_pre", "resid_mid", "resid_post")
        if f"blocks.0.hook_{s}" in model.hook_dict
    )
    assert facts.weights_bytes == sum(p.numel() * 4 for p in model.parameters())
    assert study.ModelFacts.from_json(facts.to_json()) == facts
    for claim in study.CLAIMS:  # the plan on the facts is the plan on the model
        assert study.plan(MODEL, facts, claim, "full") == study.plan(MODEL, model, claim, "full")
    with_model = results.stored_verdicts(MODEL, model, root=merged, size="smoke")
    assert results.stored_verdicts(MODEL, root=merged, size="smoke").equals(with_model)
    # a folder with tables but no facts says how to write them
    bare = tmp_path / "bare"
    (bare / MODEL).mkdir(parents=True)
    results.load(MODEL, 5, root=merged).to_parquet(bare / MODEL / "claim5.parquet")
    with pytest.raises(ValueError, match="no model.json; rerun .*--merge"):
        results.stored_tables(5, [MODEL], root=bare)
    with pytest.raises(TypeError, match="a loaded model or ModelFacts"):
        study.plan(MODEL, "tiny-llama", 5, "smoke")


def test_merge_without_a_model_uses_the_stored_facts(merged, monkeypatch):
    from kvdirect_interp.study import run

    def no_load(name):
        raise AssertionError("merge loaded the model although its facts are stored")

    monkeypatch.setattr(run, "loader", no_load)
    before = {c: pd.read_parquet(p) for c, p in study.merge(MODEL, "smoke", out=merged).items()}
    assert all(len(df) for df in before.values())


def test_each_claim_starts_with_one_model_in_memory(tmp_path):
    from kvdirect_interp.study.measure import Context

    ctx = Context(lambda dtype: object(), scratch=tmp_path)
    fp32, _ = ctx.model("float32"), ctx.model("bfloat16")
    ctx.refs_for((0, 256, 48))["FullKV"] = "a reference"
    ctx.release()
    assert ctx.model("float32") is fp32 and set(ctx._models) == {"float32"}
    assert ctx.refs_for((0, 256, 48)) == {}


def test_claim5_summary_and_cost_views(merged):
    from kvdirect_interp import results
    from kvdirect_interp.cost import Arch

    five = results.load(MODEL, 5, root=merged)
    summ = results.claim5_summary(five)
    assert len(summ) == five.groupby(["policy", "budget"]).ngroups
    two = summ[summ.prompts > 1]
    assert not two.empty
    one = summ[summ.prompts == 1]
    for metric in results.CLAIM5_INTERVALS:  # token match, first divergence, KL per step
        low, mean, high = two[f"{metric}_low"], two[metric], two[f"{metric}_high"]
        assert ((low <= mean) & (mean <= high)).all(), metric
        assert one[f"{metric}_low"].isna().all() and one[f"{metric}_high"].isna().all()
    # each interval is the one bootstrap_ci gives that metric alone over the same prompts
    first = two.iloc[0]
    g = five[(five.policy == first.policy) & (five.budget == first.budget)]
    for metric in results.CLAIM5_INTERVALS:
        expect = bootstrap_ci(g[metric].to_numpy())
        assert (first[metric], first[f"{metric}_low"], first[f"{metric}_high"]) == expect
    assert (summ.vs_fullkv == summ.bytes_held / summ.fullkv_bytes).all()
    cost = results.claim5_cost(five, Arch.of(tiny_model(MODEL)))
    assert (cost.flops_per_step > 0).all()
    assert (cost.context == cost.prompt_tokens + 8 - 1).all()  # smoke: 8 new tokens
    at = cost[cost.budget == 16].groupby("policy").flops_per_step.mean()
    assert at["KVDirect[first_layer]"] > at["KVDirect[every_layer]"] > at["H2O"]
    # SnapKV compresses the prompt once and then grows: its step reads the budget plus the
    # tokens generated since, so its formula is given where the prompt ended
    if "SnapKV" in at and "WindowOnly" in at:
        assert at["SnapKV"] > at["WindowOnly"]


def test_held_bytes_is_what_every_stored_kvdirect_row_held():
    """The equal-memory budgets rest on `memory.held_after`: on the committed full studies
    it gives every KV-Direct row of claim 5 and every row's full cache, on every model
    studied (Gemma 3's prompts past its sliding window included)."""
    from kvdirect_interp import results
    from kvdirect_interp.memory import held_after
    from kvdirect_interp.policies import FullKV

    checked = 0
    for name in ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"):
        table = results.load(name, 5)
        if table is None:
            continue
        shape = results.facts(name).shape
        seen = table.prompt_tokens + table.unit_settings.map(
            lambda s: json.loads(s)["new_tokens"] - 1
        )
        full = [held_after(shape, FullKV(), 0, int(n)) for n in seen]
        assert table.fullkv_bytes.tolist() == full, name
        kvd = table.policy.str.startswith("KVDirect")
        rows = table[kvd]
        expect = [
            held_after(shape, registry.make(p, int(w)), int(w), int(n))
            for p, w, n in zip(rows.policy, rows.budget, seen[kvd], strict=True)
        ]
        assert rows.bytes_held.tolist() == expect, name
        checked += len(rows)
    assert checked > 0
