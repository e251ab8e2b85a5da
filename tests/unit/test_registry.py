"""policies/registry.py: one table of every policy, keyed by each policy's own name."""

import pytest

import kvdirect_interp as kd
from kvdirect_interp import experiments as ex
from kvdirect_interp import policies
from kvdirect_interp.policies import POLICIES, CachePolicy, EvictionPolicy, KVDirect, registry
from kvdirect_interp.policies.kvdirect import MODES
from kvdirect_interp.policies.registry import make

BUDGETS = [1, 2, 3, 8, 16, 64, 256]


def _exported_policy_classes(module) -> set[type]:
    return {
        obj
        for name in module.__all__
        if isinstance(obj := getattr(module, name), type)
        and issubclass(obj, CachePolicy)
        and obj not in (CachePolicy, EvictionPolicy)
    }


def test_every_exported_policy_class_is_registered():
    registered = {type(make_(8)) for make_ in POLICIES.values()}
    assert _exported_policy_classes(policies) == registered
    assert _exported_policy_classes(kd) == registered
    assert {
        make_(8).checkpoint for make_ in POLICIES.values() if isinstance(make_(8), KVDirect)
    } == set(MODES)


@pytest.mark.parametrize("name", list(POLICIES))
def test_each_key_is_the_policys_own_name_at_any_budget(name):
    for budget in BUDGETS:  # the small settings suit any budget >= 1
        policy = POLICIES[name](budget)
        assert isinstance(policy, CachePolicy) and policy.name == name
        if isinstance(policy, EvictionPolicy):
            assert policy.budget == budget
        if isinstance(policy, KVDirect):
            assert policy.window == budget


def test_names():
    assert list(POLICIES) == [
        "FullKV",
        "NoCache",
        "KVDirect[every_layer]",
        "KVDirect[first_layer]",
        "KVDirect[token_ids]",
        "KVDirect[min_bytes]",
        "WindowOnly",
        "StreamingLLM",
        "H2O",
        "SnapKV",
        "SnapKVPerStep",
        "TOVA",
    ]
    assert KVDirect(4, checkpoint="token_ids", exact_shapes=False).name == "KVDirect[token_ids]"
    assert kd.H2O(4, recent=1).name == "H2O"


def _old_views():
    """experiments.BASELINES / KVDIRECT_MODES as they were written before the registry; the
    per-step SnapKV of then is SnapKVPerStep now, and SnapKV the published method."""

    def snapkv_per_step(b):
        w = max(1, min(8, b // 2))
        return kd.SnapKVPerStep(b, observation_window=w, kernel=min(5, 2 * (w // 2) + 1))

    base = {
        "WindowOnly": kd.WindowOnly,
        "StreamingLLM": lambda b: kd.StreamingLLM(b, sinks=min(4, b - 1)),
        "H2O": kd.H2O,
        "SnapKV": kd.SnapKV,
        "SnapKVPerStep": snapkv_per_step,
        "TOVA": kd.TOVA,
    }
    modes = {
        f"KVDirect[{m}]": (lambda b, m=m: KVDirect(b, checkpoint=m))
        for m in ("every_layer", "first_layer", "token_ids", "min_bytes")
    }
    return base, modes


def test_experiments_views_keep_their_names_order_and_settings():
    old_base, old_modes = _old_views()
    for new, old in ((ex.BASELINES, old_base), (ex.KVDIRECT_MODES, old_modes)):
        assert list(new) == list(old)
        for name in old:
            assert all(new[name](b) == old[name](b) for b in BUDGETS), name
    # the names notebooks, scripts and verify.py look up
    for name in (
        "KVDirect[every_layer]",
        "KVDirect[first_layer]",
        "KVDirect[min_bytes]",
        "KVDirect[token_ids]",
    ):
        assert name in ex.KVDIRECT_MODES
    assert set(ex.BASELINES) == {
        "WindowOnly",
        "StreamingLLM",
        "H2O",
        "SnapKV",
        "SnapKVPerStep",
        "TOVA",
    }


def test_snapkv_is_the_published_method_and_the_per_step_one_keeps_its_settings():
    for b in BUDGETS:
        assert make("SnapKV", b) == kd.SnapKV(
            b, observation_window=32, kernel=5, pooling="avg", per_head=True
        )
        assert make("SnapKV", b).compress_once and not make("SnapKVPerStep", b).compress_once
    assert make("SnapKVPerStep", 16) == kd.SnapKVPerStep(16, observation_window=8, kernel=5)
    assert make("SnapKVPerStep", 5) == kd.SnapKVPerStep(5, observation_window=2, kernel=3)
    assert make("SnapKVPerStep", 1) == kd.SnapKVPerStep(1, observation_window=1, kernel=1)
    assert set(registry.baselines()) >= {"SnapKV", "SnapKVPerStep"}


def test_make_reads_the_registry_spelling_only():
    assert make("KVDirect[min_bytes]", 5) == KVDirect(5, checkpoint="min_bytes")
    assert make("FullKV", 5) == kd.FullKV()
    # the old spellings ("KVDirect:<mode>", bare "KVDirect") were dropped at 0.1.0
    for old in ("KVDirect:min_bytes", "KVDirect"):
        with pytest.raises(ValueError, match=rf"unknown policy '{old}'; accepted: "):
            make(old, 5)


def test_checkpoint_modes_are_checked_at_runtime():
    accepted = r"\['every_layer', 'first_layer', 'token_ids', 'min_bytes'\]"
    with pytest.raises(ValueError, match=r"unknown checkpoint mode 'all'; accepted: " + accepted):
        KVDirect(4, checkpoint="all")


def test_replay_modes_are_the_kvdirect_modes_that_re_run_every_layer():
    from kvdirect_interp.policies.kvdirect import REPLAY_MODES

    assert registry.replay_modes() == [f"KVDirect[{m}]" for m in MODES if m in REPLAY_MODES]
    assert all(make(n, 4).replays for n in registry.replay_modes())
    rebuilds = set(registry.kvdirect_modes()) - set(registry.replay_modes())
    assert rebuilds and not any(make(n, 4).replays for n in rebuilds)
