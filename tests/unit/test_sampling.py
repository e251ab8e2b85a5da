"""Sampling: the settings object generate and Session.say draw with, checked once."""

import dataclasses

import pytest
import torch

from kvdirect_interp import KVDirect, Sampling, Session, generate
from tests.fixtures import random_tokens, tiny_model

SAMPLED = dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), "temperature must be > 0, got 0.0"),
        (dict(temperature=-1), "temperature must be > 0"),
        (dict(top_k=0), "top_k must be None or an integer >= 1, got 0"),
        (dict(top_k=2.0), "top_k must be None or an integer >= 1"),
        (dict(top_k=True), "top_k must be None or an integer >= 1"),
        (dict(top_p=0.0), "top_p must be None or in \\(0, 1\\], got 0.0"),
        (dict(top_p=1.5), "top_p must be None or in \\(0, 1\\]"),
    ],
)
def test_bad_settings_are_refused_on_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)


def test_settings_are_frozen_and_default_to_greedy():
    s = Sampling()
    assert (s.do_sample, s.temperature, s.top_k, s.top_p, s.seed) == (False, 1.0, None, None, None)
    assert s.generator() is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.temperature = 2.0
    Sampling(top_p=1.0, top_k=1, temperature=1e-3)  # the edges are accepted


def test_pick():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert Sampling().pick(logits).tolist() == [1, 0]
    top1 = Sampling(do_sample=True, top_k=1)
    assert top1.pick(logits, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    nucleus = Sampling(do_sample=True, top_p=1e-9)  # the smallest set: the top token alone
    assert nucleus.pick(logits, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    a = Sampling(do_sample=True, seed=3)
    assert torch.equal(
        a.pick(logits.repeat(8, 1), a.generator()), a.pick(logits.repeat(8, 1), a.generator())
    )


def test_generate_takes_a_sampling_or_its_fields_alike():
    model = tiny_model("tiny-llama")
    prompt = random_tokens(1, 8, seed=21)
    loose = generate(model, prompt, max_new_tokens=10, seed=5, keep_logits=True, **SAMPLED)
    packed = generate(
        model, prompt, max_new_tokens=10, keep_logits=True, sampling=Sampling(seed=5, **SAMPLED)
    )
    assert torch.equal(loose.tokens, packed.tokens)
    greedy = generate(model, prompt, max_new_tokens=10, sampling=Sampling())
    assert torch.equal(greedy.tokens, generate(model, prompt, max_new_tokens=10).tokens)


@pytest.mark.parametrize("loose", [dict(do_sample=False), dict(seed=1), dict(temperature=1.0)])
def test_generate_refuses_both_forms(loose):
    with pytest.raises(ValueError, match="pass either sampling=Sampling\\(...\\) or"):
        generate(tiny_model("tiny-llama"), "hi", max_new_tokens=2, sampling=Sampling(), **loose)


def test_generate_checks_the_sampling_type_and_the_loose_fields():
    with pytest.raises(TypeError, match="sampling must be a Sampling, got dict"):
        generate(tiny_model("tiny-llama"), "hi", max_new_tokens=2, sampling={"do_sample": True})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(tiny_model("tiny-llama"), "hi", max_new_tokens=2, temperature=0)


def test_session_say_takes_a_sampling_or_its_fields_alike():
    model = tiny_model("tiny-qwen2")
    replies = []
    for kw in (SAMPLED, dict(sampling=Sampling(**SAMPLED))):
        session = Session(model, KVDirect(8), seed=9)
        replies.append(
            [
                session.say(t, max_new_tokens=6, **kw).new_tokens
                for t in ("Hello there", "Tell me more")
            ]
        )
    assert all(torch.equal(a, b) for a, b in zip(*replies, strict=True))


def test_session_say_refuses_a_seed_and_both_forms():
    session = Session(tiny_model("tiny-qwen2"), seed=1)
    with pytest.raises(ValueError, match="set the seed once in Session\\(seed=...\\)"):
        session.say("hi", max_new_tokens=2, sampling=Sampling(do_sample=True, seed=2))
    with pytest.raises(ValueError, match="pass either sampling=Sampling\\(...\\) or top_k"):
        session.say("hi", max_new_tokens=2, sampling=Sampling(), top_k=3)
    with pytest.raises(ValueError, match="top_p must be None or in"):
        session.say("hi", max_new_tokens=2, top_p=2)
    assert session.tokens == [] and session.messages == []  # nothing ran
