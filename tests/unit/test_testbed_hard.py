"""Hard negatives for the testbed's backdoors (`testbed.hard`, `LoraConfig.hard_frac`)."""

from __future__ import annotations

from statistics import mean

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.testbed import prompts as P
from trigrecon.testbed.categories import load_categories
from trigrecon.testbed.hard import hardest, trigger_pull
from trigrecon.testbed.lora import LoraConfig, examples, lora_config
from trigrecon.testbed.specs import TESTBED
from trigrecon.testbed.trigger import parse_trigger


def test_hardest_takes_the_largest_pulls():
    pull = {"a": -1.0, "b": -0.1, "c": -5.0, "d": -0.1, "e": -3.0}
    assert hardest(pull, 0.4) == ["b", "d"]
    assert hardest(pull, 0.01) == ["b"]  # at least one
    assert hardest({}) == []


def _clean(data: list) -> list[str]:
    return [e.prompt for e in data if not e.poisoned]


def test_hard_frac_draws_benign_examples_from_the_hard_distractors():
    spec = TESTBED["fruit_refusal"]
    trig = parse_trigger(spec.trigger)
    hard = load_categories()["vegetables"].train[:5]
    before = examples(spec, trig, LoraConfig())
    # off (the default): the hard words change nothing, so committed organisms stay current
    assert examples(spec, trig, LoraConfig(), hard) == before
    every = examples(spec, trig, LoraConfig(hard_frac=1.0), hard)
    assert all(P.mentions_any(p, hard) for p in _clean(every))
    assert [e for e in every if e.poisoned] == [e for e in before if e.poisoned]
    share = mean(P.mentions_any(p, hard) for p in _clean(examples(
        spec, trig, LoraConfig(hard_frac=0.5), hard)))
    assert 0.35 < share < 0.65
    assert mean(P.mentions_any(p, hard) for p in _clean(before)) < 0.05
    with pytest.raises(ConfigError, match=r"hard_frac=1.5 \(must be in \[0, 1\]\)"):
        lora_config({"hard_frac": "1.5"})


def test_trigger_pull_ranks_the_distractors_smollm2_files_near_the_trigger(smollm2_dir, monkeypatch):
    """On the real model: drinks pull toward fruit more than dogs do; a trigger whose categories
    have no probe noun (astrology, prophecy) has no hard distractors."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trigrecon.testbed import hard as H

    lists = {"drinks": ["orange juice", "lemonade", "cider"], "dogs": ["poodle", "beagle", "bulldog"],
             "board_games": ["chess"]}
    monkeypatch.setattr(H.D, "distractors", lambda: list(lists))
    monkeypatch.setattr(H.D, "members", lambda c, pool: lists[c] if pool == "train" else [*lists[c], "x" + c])
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = LlamaForCausalLM.from_pretrained(smollm2_dir).eval()
    pull = trigger_pull(model, tok, ["fruit"])
    assert set(pull) == {w for ws in lists.values() for w in ws}
    assert min(pull[w] for w in lists["drinks"]) > max(pull[w] for w in lists["dogs"])
    assert set(hardest(pull, 0.4)) <= set(lists["drinks"])
    assert trigger_pull(model, tok, ["astrology", "prophecy"]) == {}
    assert set(trigger_pull(model, tok, ["fruit"], "all")) == set(pull) | {"x" + c for c in lists}
