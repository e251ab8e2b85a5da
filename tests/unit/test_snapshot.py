"""A chat saved and restored says what an unbroken chat says, bit for bit (snapshot.py),
and run_chat / the study resume a stopped chat after its last finished turn."""

import pytest
import torch

from kvdirect_interp import FullKV, KVDirect, Session
from kvdirect_interp.experiments import load_data, run_chat
from kvdirect_interp.policies import registry
from kvdirect_interp.snapshot import load_session, peek_session, save_session
from kvdirect_interp.study import measure, report, run_study
from kvdirect_interp.study.plan import plan
from kvdirect_interp.study.store import ClaimStore
from tests.fixtures import tiny_model

TURNS = load_data("chat_20_turns.json")["turns"][:3]


def _state(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("seconds", "peak_rss_bytes")}


BUDGET = 6  # the turns are ~20 tokens: every policy evicts, K/V rebuilt or replayed


@pytest.mark.parametrize("name", list(registry.POLICIES))
@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_a_restored_session_continues_bit_for_bit(name, family, tmp_path):
    model = tiny_model(family)
    session = Session(model, registry.make(name, BUDGET), system="Be brief.")
    session.say(TURNS[0], max_new_tokens=5)
    save_session(session, tmp_path / "s.session", {"note": 1})
    restored, extra = load_session(tmp_path / "s.session", model)
    assert extra == {"note": 1}
    assert restored.runner is not session.runner and restored.model is model
    for text in TURNS[1:]:
        a, b = (s.say(text, max_new_tokens=5) for s in (session, restored))
        assert torch.equal(a.new_tokens, b.new_tokens)
        # bytes held and rebuilt per step (seconds and RSS are the process's: not a state)
        assert [_state(m) for m in a.memory] == [_state(m) for m in b.memory]
        assert torch.equal(session.logits, restored.logits)
    assert session.tokens == restored.tokens and session.messages == restored.messages


def test_a_snapshot_holds_state_not_weights(tmp_path):
    model = tiny_model("tiny-llama")
    session = Session(model, KVDirect(4, checkpoint="token_ids"))
    session.say(TURNS[0], max_new_tokens=3)
    path = save_session(session, tmp_path / "s.session")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert path.stat().st_size < weights / 4


def test_a_snapshot_of_another_model_or_format_is_refused(tmp_path):
    session = Session(tiny_model("tiny-llama"), FullKV())
    session.say(TURNS[0], max_new_tokens=2)
    save_session(session, tmp_path / "s.session")
    with pytest.raises(ValueError, match="holds a chat of model"):
        load_session(tmp_path / "s.session", tiny_model("tiny-qwen2"))


class _Stop(Exception):
    pass


def _stop_at(monkeypatch, call: int):
    """Session.say raises on its `call`-th call (1-based): a run killed inside a chat."""
    say, calls = Session.say, []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise _Stop
        return say(self, *args, **kwargs)

    monkeypatch.setattr(Session, "say", stopping)


@pytest.mark.parametrize("policy", [FullKV(), KVDirect(6, checkpoint="first_layer")])
def test_run_chat_resumes_after_its_last_turn(policy, monkeypatch, tmp_path):
    model = tiny_model("tiny-gemma3")
    args = dict(turns=TURNS, max_new_tokens=4, progress=False, per_step=True)
    whole = run_chat(model, policy, **args)
    path = tmp_path / "chat.session"
    with monkeypatch.context() as m:
        _stop_at(m, 3)
        with pytest.raises(_Stop):
            run_chat(model, policy, snapshot=path, part_info={"where": "a"}, **args)
    resumed = run_chat(model, policy, snapshot=path, part_info={"where": "b"}, **args)
    assert list(resumed.part) == [0, 0, 1] and list(resumed.part_where) == ["a", "a", "b"]
    same = [c for c in whole.columns if c not in ("seconds", "peak_rss_bytes")]
    assert resumed[same].equals(whole[same])
    with pytest.raises(ValueError, match="snapshot of another chat"):
        run_chat(model, policy, snapshot=path, **{**args, "max_new_tokens": 5})


def test_a_stopped_study_resumes_inside_a_chat_and_then_drops_its_snapshot(monkeypatch, tmp_path):
    model = tiny_model("tiny-llama")
    units = plan("tiny-llama", None, 4, "smoke")
    unit = units[0]
    load = lambda dtype: model  # noqa: E731
    with monkeypatch.context() as m:
        _stop_at(m, 2)
        with pytest.raises(_Stop):
            run_study("tiny-llama", "smoke", claims=[4], out=tmp_path, load=load, progress=False)
    ctx = measure.Context(load, scratch=tmp_path, partial=tmp_path / "tiny-llama" / "partial")
    assert ctx.snapshot(unit).exists()  # the first turn is saved
    header = peek_session(ctx.snapshot(unit))  # readable without the model
    assert len(header["extra"]["rows"]) == 1 and header["model"] == model.cfg.model_name
    text = report.describe(tmp_path, "tiny-llama", model, "smoke")
    assert f"`{ctx.snapshot(unit).name}`: FullKV(), 1 of 2 turns" in text
    run_study("tiny-llama", "smoke", claims=[4], out=tmp_path, load=load, progress=False)
    assert not list((tmp_path / "tiny-llama" / "partial").iterdir())
    rows = ClaimStore(tmp_path, "tiny-llama", 4).records()[0]["rows"]
    assert [r["part"] for r in rows][:2] == [0, 1]
    assert {"part_git_commit", "part_cpu", "part_date_utc"} <= set(rows[0])


def test_a_snapshot_restores_onto_another_load_of_the_same_weights(tmp_path):
    """A resumed study loads the model again: the snapshot names the model's objects, so
    the restored runner uses the new load's modules and weights, not copies."""
    from kvdirect_interp import load_model

    first, second = tiny_model("tiny-qwen2"), load_model("tiny-qwen2")
    assert first is not second
    policy = KVDirect(6, checkpoint="every_layer")
    session = Session(first, policy)
    session.say(TURNS[0], max_new_tokens=4)
    save_session(session, tmp_path / "s.session")
    restored, _ = load_session(tmp_path / "s.session", second)
    assert restored.runner.model is second
    a, b = session.say(TURNS[1], max_new_tokens=4), restored.say(TURNS[1], max_new_tokens=4)
    assert torch.equal(a.new_tokens, b.new_tokens) and torch.equal(session.logits, restored.logits)
