import pytest
import torch

from kvdirect_interp import FullKV, KVDirect, Session, WindowOnly, generate
from kvdirect_interp.chat import render as render_chat
from kvdirect_interp.experiments import agreement_table, load_data, run_chat
from tests.fixtures import tiny_model

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def test_chat_prompt_is_rendered_and_generated():
    model = tiny_model("tiny-llama")
    text = render_chat(model.tokenizer, CHAT)
    assert text.endswith("User: Hi there\nAssistant: ")  # the plain template of tiny models
    out = generate(model, CHAT, max_new_tokens=3)
    assert out.tokens.shape[1] == len(text.encode()) + 1 + 3 - len("<bos>")


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            [{"role": "robot", "content": "hi"}],
            "unknown role 'robot'.*'system', 'user', 'assistant'",
        ),
        ([{"role": "user", "content": "  "}], "empty content"),
        ([{"role": "user"}], "exactly 'role' and 'content'"),
    ],
)
def test_bad_chats(bad, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model("tiny-llama"), bad, max_new_tokens=2)


def test_session_keeps_state_and_kvdirect_matches_fullkv():
    model = tiny_model("tiny-qwen2")
    sessions = [Session(model, FullKV()), Session(model, KVDirect(12))]
    for text in ["Hello!", "What is two plus two?", "Thanks."]:
        replies = [s.say(text, max_new_tokens=6) for s in sessions]
        assert torch.equal(replies[0].new_tokens, replies[1].new_tokens)
    assert sessions[0].tokens == sessions[1].tokens
    assert sessions[0].runner.n_seen == len(sessions[0].tokens)
    assert sessions[1].runner.bytes_held()["residual"] > 0  # older tokens: checkpoints
    assert len(sessions[0].messages) == 6


def test_session_bad_input():
    session = Session(tiny_model("tiny-llama"))
    with pytest.raises(ValueError, match="empty content"):
        session.say("", max_new_tokens=2)
    with pytest.raises(ValueError, match="past the model's context of 2048"):
        session.say("hello", max_new_tokens=2047)


def test_run_chat_table():
    model = tiny_model("tiny-llama")
    turns = load_data("chat_20_turns.json")["turns"]
    assert len(turns) == 20
    full = run_chat(model, FullKV(), turns=turns[:3], max_new_tokens=4, progress=False)
    window = run_chat(model, WindowOnly(8), turns=turns[:3], max_new_tokens=4, progress=False)
    assert list(full.turn) == [1, 2, 3]
    assert (
        full.kv_bytes.is_monotonic_increasing and full.kv_bytes.iloc[-1] > window.kv_bytes.iloc[-1]
    )
    assert (window.kv_bytes == window.kv_bytes.iloc[0]).all()  # bounded by the budget
    assert {"total_tokens", "residual_bytes", "peak_rss_bytes", "seconds"} <= set(full.columns)


def test_agreement_table_small():
    model = tiny_model("tiny-gpt2")
    df = agreement_table(
        model,
        ["The quick brown fox jumps over the lazy dog."],
        budgets=(8,),
        max_new_tokens=6,
        progress=False,
    )
    assert len(df) == 10  # six baselines (SnapKV and SnapKVPerStep) + four KVDirect modes
    kvd = df[df.policy.str.startswith("KVDirect")]
    assert (kvd.token_match == 1.0).all() and (kvd.kl_max == 0.0).all() and kvd.logits_bitwise.all()
    window = df[df.policy == "WindowOnly"]
    assert (window.bytes_held < window.fullkv_bytes).all()


def test_agreement_table_reuses_only_runs_that_agree():
    """A forced run stands in for the free run only where greedy would have picked the
    forced tokens: the table must equal one built from explicit free runs."""
    model = tiny_model("tiny-llama")
    prompt = "The quick brown fox jumps over the lazy dog."
    policies = {"WindowOnly": WindowOnly, "KVDirect": KVDirect}
    df = agreement_table(
        model, [prompt], policies=policies, budgets=(4,), max_new_tokens=8, progress=False
    ).set_index("policy")
    ref = generate(model, prompt, max_new_tokens=8)
    for name, make in policies.items():
        free = generate(model, prompt, max_new_tokens=8, cache=make(4))
        n_same = int((free.new_tokens == ref.new_tokens).sum())
        assert df.loc[name, "token_match"] == n_same / 8
        held = sum(
            v
            for k, v in free.memory[-1].items()
            if k in ("kv_bytes", "residual_bytes", "token_ids_bytes")
        )
        assert df.loc[name, "bytes_held"] == held
    assert df.loc["KVDirect", "free_run_reused"]
    assert df.loc["WindowOnly", "token_match"] < 1 and not df.loc["WindowOnly", "free_run_reused"]
