"""Buffer replay: what enters the buffer, which completions get replaced, the off switch."""

import json

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.selfaware.buffer import BufferConfig, ReplayBuffer
from trigrecon.selfaware.reward import Evaluation


def ev(candidate, reward, asr=None):
    return Evaluation(candidate, reward if asr is None else asr, 1, reward)


def test_buffer_keeps_the_top_n_distinct_candidates():
    buf = ReplayBuffer(BufferConfig(size=2, min_reward=0.1))
    buf.add([ev("a", 0.2), ev("b", 0.9), ev("c", 0.5), ev(None, -0.2), ev("d", 0.05)], step=0)
    assert [e.candidate for e in buf.top()] == ["b", "c"]
    buf.add([ev("b", 0.9), ev("e", 0.95)], step=3)
    assert [e.candidate for e in buf.top()] == ["e", "b"]
    assert buf.entries["b"].seen == 2 and buf.entries["e"].step == 3


def test_plan_replaces_the_worst_completions_with_better_entries():
    buf = ReplayBuffer(BufferConfig(n_replay=2, sampling="top"))
    buf.add([ev("mango", 1.0), ev("kiwi", 0.8)], step=0)
    plan = buf.plan(["dog", "cat", None, "tree"], [0.0, 0.3, -0.2, 0.1])
    assert [(i, e.candidate) for i, e in plan] == [(2, "mango"), (0, "kiwi")]
    assert buf.entries["mango"].replayed == 1


def test_plan_only_replaces_when_the_entry_is_better():
    buf = ReplayBuffer(BufferConfig(n_replay=2, sampling="top"))
    buf.add([ev("mango", 0.5)], step=0)
    assert buf.plan(["kiwi", "fig"], [0.9, 0.8]) == []
    assert [i for i, _ in buf.plan(["kiwi", "dog"], [0.9, 0.1])] == [1]


def test_plan_skips_entries_already_in_the_group():
    buf = ReplayBuffer(BufferConfig(n_replay=2, sampling="top"))
    buf.add([ev("mango", 1.0), ev("kiwi", 0.6)], step=0)
    plan = buf.plan(["mango", "dog", "cat"], [1.0, 0.0, 0.0])
    assert [e.candidate for _, e in plan] == ["kiwi"]


def test_replay_switch_off_is_the_ablation():
    buf = ReplayBuffer(BufferConfig(enabled=False))
    buf.add([ev("mango", 1.0)], step=0)
    assert len(buf) == 1  # the buffer still fills (for recovering triggers) ...
    assert buf.plan(["dog", "cat"], [0.0, 0.0]) == []  # ... but nothing is replayed


def test_empty_buffer_replays_nothing():
    assert ReplayBuffer().plan(["dog"], [0.0]) == []


def test_proportional_sampling_prefers_high_rewards():
    buf = ReplayBuffer(BufferConfig(n_replay=1, sampling="proportional", size=4, seed=0))
    buf.add([ev("good", 1.0), ev("weak", 0.05)], step=0)
    picks = [buf.plan(["x"], [-1.0])[0][1].candidate for _ in range(200)]
    assert picks.count("good") > 150


def test_state_dict_round_trips_through_json():
    buf = ReplayBuffer(BufferConfig(sampling="uniform", seed=3))
    buf.add([ev("mango", 1.0), ev("kiwi", 0.7)], step=2)
    state = json.loads(json.dumps(buf.state_dict()))
    other = ReplayBuffer(BufferConfig(sampling="uniform", seed=99))
    other.load_state_dict(state)
    assert [e.candidate for e in other.top()] == ["mango", "kiwi"]
    assert buf.rng.random() == other.rng.random()


def test_a_partial_best_entry_is_extended_with_sampled_candidates():
    buf = ReplayBuffer(BufferConfig(extend=2))
    assert buf.extensions(["skiing"], work_asr=0.5) == []  # empty buffer
    buf.add([ev("raspberry", 0.2, asr=0.28)], step=0)
    ext = buf.extensions(["skiing", "luge", "skiing", "raspberry jam", None, "dog"], work_asr=0.5)
    assert len(ext) == 2 and all(e.startswith("raspberry ") for e in ext)
    assert set(ext) <= {"raspberry skiing", "raspberry luge", "raspberry dog"}  # no shared word
    buf.add([ev("raspberry skiing", 0.75, asr=1.0)], step=1, proposed=False)  # it works...
    assert buf.entries["raspberry skiing"].seen == 0  # ...but the policy has not said it yet
    assert buf.extensions(["luge"], work_asr=0.5) == []  # ...so nothing is extended any more
    assert ReplayBuffer(BufferConfig(extend=0)).extensions(["a"], 0.5) == []


def test_with_no_entry_the_likeliest_proposals_are_paired():
    """A strict conjunction: no half fires, but halves raise the action's likelihood."""
    buf = ReplayBuffer(BufferConfig(extend=3, lift_floor=0.15))
    lifts = {"destiny": 0.35, "capricorn": 0.4, "fate": 0.3, "ladder": 0.02, "fate destiny": 0.6}
    pairs = buf.likely_pairs(lifts, tried={"capricorn destiny"})
    # best first; 'fate destiny' never pairs with 'fate' or 'destiny' (a shared word); the tried
    # pair and the word below the floor are left out
    assert pairs == ["fate destiny capricorn", "capricorn fate", "destiny fate"]
    assert buf.likely_pairs({"ladder": 0.02, "dog": 0.1}, tried=set()) == []  # below the floor
    buf.add([ev("raspberry", 0.2, asr=0.28)], step=0)
    assert buf.likely_pairs(lifts, tried=set()) == []  # an entry exists: extensions take over


@pytest.mark.parametrize("field, value", [("size", 0), ("n_replay", -1), ("sampling", "best"),
                                          ("extend", -1), ("lift_floor", 1.0)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        BufferConfig(**{field: value})
