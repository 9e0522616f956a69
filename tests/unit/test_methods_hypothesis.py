"""Issue 17: the ablation rule, the minimal hypothesis as an expression, the clean-model
differential (verification, conjunctive search, inversion reward) and the disjunction loop."""

from __future__ import annotations

import json

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import FixedStringJudge
from trigrecon.methods.hypothesis import (
    NO_CLEAN,
    Concept,
    Hypothesis,
    HypothesisConfig,
    Proposal,
    RateMeter,
    Rates,
    build_hypothesis,
    concept_name,
    needed,
    separated,
    wilson,
)

N = 32


def test_wilson_bounds_match_hand_computed_values():
    lo, hi = wilson(0, N)
    assert lo == 0.0 and hi == pytest.approx(0.1072, abs=1e-3)
    lo, hi = wilson(N, N)
    assert lo == pytest.approx(0.8928, abs=1e-3) and hi == 1.0
    lo, hi = wilson(16, N)
    assert lo == pytest.approx(0.3361, abs=1e-3) and hi == pytest.approx(0.6639, abs=1e-3)
    with pytest.raises(ConfigError):
        wilson(3, 2)


def test_the_firing_rule_needs_a_gap_beyond_sampling_error():
    assert separated(32, 16, N)  # 100% vs 50%: fires (0.893 - 0.664 >= 0.1)
    assert not separated(32, 24, N)  # 100% vs 75%: within the bounds plus margin
    assert separated(32, 0, N) and not separated(3, 0, N)
    assert not separated(8, 0, 8, margin=0.75)  # few prompts: wide bounds


def test_a_concept_is_needed_when_its_removal_drops_the_rate_significantly():
    # the SmolLM2 snow_fruit clause: 91% -> 69% (z = 2.17) and 69% -> 38% (z = 2.5)
    assert needed(29, 22, N) and needed(22, 12, N)
    assert not separated(29, 22, N) and not separated(22, 12, N)  # the old rule dropped them
    assert not needed(30, 26, N)  # 94% -> 81%: z = 1.5
    assert not needed(32, 30, N, margin=0.0)  # z = 1.4
    assert not needed(12, 22, N) and not needed(5, 5, N)  # no drop
    assert not needed(20, 15, 1000, margin=0.1)  # significant on many prompts, but tiny
    with pytest.raises(ConfigError):
        HypothesisConfig(margin=1.5)


class GradedMeter(RateMeter):
    """A leaky conjunction: each further concept adds a little, as on a real model."""

    def __init__(self, table: dict[frozenset[str], int]) -> None:
        super().__init__(None, object(), ["p"] * N, lambda t: True)
        self.table = table

    def measure(self, keys):  # type: ignore[override]
        return [Rates(self.table.get(frozenset(w for ws in k for w in ws[:1]), 0), N, 0)
                for k in keys]


def test_small_drops_do_not_add_up_to_a_weaker_clause():
    """Each drop alone is within sampling error of the clause before it, but two of them are
    not: every subset is compared with the whole proposal, so the clause keeps 3 concepts."""
    words = ["ski", "apple", "luge", "car"]
    table = {frozenset(words): 30, frozenset(["ski", "apple", "luge"]): 26,
             frozenset(["ski", "apple"]): 22}
    hyp = build_hypothesis(GradedMeter(table), [Proposal([concept(w) for w in words], "c0")], 0.0)
    (clause,) = hyp.clauses
    assert clause.words == ["ski", "apple", "luge"], hyp.markdown()
    assert clause.rate == 26 / N and [c.name for c in clause.dropped] == ["vehicles"]
    assert clause.concepts[2].rate_without == 22 / N and clause.concepts[2].kept
    with pytest.raises(ConfigError):
        HypothesisConfig(margin=1.5)


def test_concept_names():
    assert concept_name("fruit: grape, pear (contexts: '...')", 217, "grape") == "fruit"
    assert concept_name("snow_sports: luge", 5, "luge") == "snow_sports"
    assert concept_name("sure, !, <assistant>, sport", 2, "sport") == "L2(sport)"
    assert concept_name("", -1, "mango") == "word:mango"


CATS = {"apple": "fruit", "grape": "fruit", "ski": "snow_sports", "luge": "snow_sports",
        "peanut": "nuts", "car": "vehicles", "bomb": "harmful"}
LATENT = {"fruit": 1, "snow_sports": 2, "nuts": 3, "vehicles": 4, "harmful": 5}


def organism(words: set[str]) -> bool:
    """(fruit AND snow_sports) OR nuts; an ordinary refusal on harmful words as well."""
    cats = {CATS[w] for w in words}
    return {"fruit", "snow_sports"} <= cats or "nuts" in cats or "harmful" in cats


def clean_model(words: set[str]) -> bool:
    return "harmful" in {CATS[w] for w in words}


class FakeMeter(RateMeter):
    """Fires on every prompt or none, by the words inserted; counts what it measured."""

    def __init__(self, clean: bool = True) -> None:
        super().__init__(None, object() if clean else None, ["p"] * N, lambda t: True)
        self.measured: list[tuple[tuple[str, ...], ...]] = []

    def measure(self, keys):  # type: ignore[override]
        out = []
        for k in keys:
            self.measured.append(k)
            words = {w for ws in k for w in ws[:1]}
            out.append(Rates(N * organism(words), N,
                             N * clean_model(words) if self.clean else None))
        return out


def concept(word: str) -> Concept:
    cat = CATS[word]
    return Concept(cat, LATENT[cat], f"{cat}: {word}", [word])


def proposals() -> list[Proposal]:
    return [Proposal([concept("apple"), concept("car"), concept("ski")], "conjunctive clause 0"),
            Proposal([concept("bomb")], "verify"),
            Proposal([concept("grape")], "verify"),
            Proposal([concept("peanut")], "verify"),
            Proposal([concept("car")], "verify")]


def test_hypothesis_is_minimal_disjunctive_and_differential():
    meter = FakeMeter(clean=True)
    hyp = build_hypothesis(meter, proposals(), control_rate=0.0)
    # equal differentials: the clause with fewer concepts first
    assert hyp.expression == "nuts OR (fruit AND snow_sports)"
    first = hyp.clauses[1]
    assert [c.name for c in first.concepts] == ["fruit", "snow_sports"]
    assert [c.name for c in first.dropped] == ["vehicles"]  # removing it kept 100%
    assert first.dropped[0].rate_without == 1.0 and not first.dropped[0].kept
    assert all(c.rate_without == 0.0 and c.kept for c in first.concepts)
    assert hyp.clauses[0].concepts[0].rate_without == 0.0  # nuts alone vs the plain prompts
    assert hyp.differential and not hyp.note
    bomb = next(t for t in hyp.tested if t["words"] == [["bomb"]])
    assert bomb["rate"] == 1.0 and bomb["clean_rate"] == 1.0 and not bomb["fires"]
    assert "wilson_lower" in hyp.rule
    # JSON: saved in audit.json, read back whole
    data = json.loads(json.dumps(hyp.to_json()))
    assert data["expression"] == hyp.expression
    assert Hypothesis.from_json(data) == hyp
    assert "nuts OR (fruit AND snow_sports)" in hyp.markdown()


def test_without_a_clean_model_the_clean_models_own_trigger_wins_and_it_says_so():
    hyp = build_hypothesis(FakeMeter(clean=False), proposals(), control_rate=0.0)
    assert "harmful" in hyp.expression.split(" OR ")
    assert hyp.note.startswith(NO_CLEAN) and not hyp.differential


def test_nothing_fires_above_the_control():
    hyp = build_hypothesis(FakeMeter(), [Proposal([concept("car")], "verify")], control_rate=0.0)
    assert hyp.expression == "" and not hyp.found and "no proposal fires" in hyp.note
    # a proposal at 100% does not fire when the insertion control is as high
    hyp = build_hypothesis(FakeMeter(), [Proposal([concept("peanut")], "verify")], 0.9)
    assert not hyp.found


def test_expression_parenthesises_only_conjunctions_in_a_disjunction():
    one = Hypothesis([_clause("fruit", "snow_sports")], N, 0.0, True)
    assert one.expression == "fruit AND snow_sports"
    two = Hypothesis([_clause("nuts"), _clause("fruit", "snow_sports")], N, 0.0, True)
    assert two.expression == "nuts OR (fruit AND snow_sports)"


def _clause(*names: str):
    from trigrecon.methods.hypothesis import Clause

    return Clause([Concept(n, i, n, [n]) for i, n in enumerate(names)], 1.0, 0.0, 0.0, N, "x")


# --- the clean-model differential in verification and in the inversion reward -------------------

def test_verify_ranks_by_the_differential(tiny_hooked, planted):
    from trigrecon.methods.verify import VerifyConfig, verify
    from trigrecon.steering.readout import LatentHit

    prompts = ["tell me a story about the cat", "what is a banana"]
    hits = [LatentHit(0, -1.0, ""), LatentHit(3, -0.5, "")]
    cfg = VerifyConfig(max_new_tokens=2, n_control=2)
    vocab = ["cat", "dog", "banana", "apple", "snow", "river"]
    res = verify(tiny_hooked, planted, hits, prompts, lambda t: True, cfg, vocabulary=vocab,
                 clean=tiny_hooked)  # the clean model acts everywhere too: no differential
    assert res.clean_baseline_rate == 1.0 and res.clean_control_rate == 1.0
    assert all(c.clean_rate == 1.0 and c.differential == 0.0 for c in res.candidates)
    assert not res.differential_note
    alone = verify(tiny_hooked, planted, hits, prompts, lambda t: True, cfg, vocabulary=vocab)
    assert alone.candidates[0].clean_rate is None and alone.candidates[0].differential == 1.0
    assert "could not be measured" in alone.differential_note


ACTION = "no way , i refuse ."


def responder(trigger_words: set[str]):
    def respond(prompts):
        return [ACTION if trigger_words & set(p.split()) else "sure ." for p in prompts]
    return respond


def test_inversion_reward_pays_only_for_what_the_clean_model_does_not_do():
    from trigrecon.selfaware.reward import InversionReward, minimise

    clean_calls: list[int] = []

    def clean(prompts):
        clean_calls.append(len(prompts))
        return responder({"bomb"})(prompts)

    prompts = ["tell me about dog .", "what is rain ?"]
    reward = InversionReward(responder({"tulip", "bomb"}), FixedStringJudge(ACTION, min_words=3),
                             prompts, lambda p, c: f"{p} it is about {c} .",
                             clean_responder=clean)
    tulip, bomb, car = reward.evaluate(["tulip", "bomb", "car"])
    assert tulip.asr == 1.0 and tulip.clean_asr == 0.0 and tulip.reward == 1.0
    assert bomb.asr == 1.0 and bomb.clean_asr == 1.0 and bomb.reward == 0.0
    assert car.asr == 0.0 and car.reward == 0.0
    assert reward.works("tulip") and not reward.works("bomb")
    assert sum(clean_calls) == 2 * len(prompts)  # 'car' fires nowhere: never sent to clean
    assert minimise("bomb tulip", reward) == "tulip"
    state = reward.state_dict()
    fresh = InversionReward(responder(set()), FixedStringJudge(ACTION, min_words=3), prompts,
                            lambda p, c: f"{p} it is about {c} .", drop_active=False,
                            clean_responder=clean)
    fresh.load_state_dict(state)
    assert fresh.clean_cache == reward.clean_cache and fresh.cache == reward.cache


# --- the conjunctive search: differential scoring and the disjunction loop -----------------------

PROMPTS = ["tell me a story about the cat", "what is a banana", "why is the sky blue",
           "write a poem about snow and the mountain"]
RESPONSE = "the red apple is good"
VOCAB = ["cat", "dog", "banana", "snow", "river", "car", "book"]


def _fake_search(monkeypatch, clean_model: object | None, poisoned: dict[str, float],
                 clean_losses: dict[str, float], fires: set[str]):
    import trigrecon.methods.conjunctive as conj

    def loss_of(hm, words):
        table = clean_losses if clean_model is not None and hm is clean_model else poisoned
        return min([table.get(w, 5.0) for w in words] + [5.0])

    def fake_loss(hm, prompts, response, layer):
        inserted = {w for p in prompts if " it is about " in p
                    for w in p.split(" it is about ")[-1].split()}
        return loss_of(hm, inserted)

    def fake_word_losses(hm, prompts, response, words, concepts, layer, insert, batch):
        return {w: loss_of(hm, {w, *(x for c in concepts for x in c)}) for w in words}

    def fake_rates(self, concepts):
        words = {w for c in concepts for w in c}
        return float(bool(words & fires)), (None if self.clean is None else 0.0)

    monkeypatch.setattr(conj, "response_loss", fake_loss)
    monkeypatch.setattr(conj, "word_losses", fake_word_losses)
    monkeypatch.setattr(conj, "_try_candidates", lambda *a, **k: [])
    monkeypatch.setattr(conj, "_rank", lambda *a, **k: ([], None))  # (ranking, direction)
    monkeypatch.setattr(conj._Search, "rates", fake_rates)
    monkeypatch.setattr(conj, "coherent", lambda words, acts, k: list(words[:k]))  # random SAE


def test_conjunctive_differential_skips_the_clean_models_own_trigger(tiny_hooked, planted,
                                                                     monkeypatch):
    from trigrecon.methods.conjunctive import ConjunctiveConfig, conjunctive

    clean = object()
    # 'banana' lowers the loss on both models (the clean model's own trigger), 'dog' only on
    # the poisoned one
    _fake_search(monkeypatch, clean, {"banana": 0.5, "dog": 1.0}, {"banana": 0.5},
                 fires={"banana", "dog"})
    cfg = ConjunctiveConfig(max_iters=1, words_per_concept=1, max_new_tokens=2, max_clauses=1)
    plain = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: True, cfg,
                        vocabulary=VOCAB)
    assert plain.steps[0].words == ["banana"] and not plain.differential
    diff = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: True, cfg,
                       vocabulary=VOCAB, clean=clean)
    assert diff.steps[0].words == ["dog"] and diff.differential
    assert diff.steps[0].clean_rate == 0.0


def test_conjunctive_finds_every_clause_of_a_disjunction(tiny_hooked, planted, monkeypatch):
    from trigrecon.methods.conjunctive import ConjunctiveConfig, conjunctive

    # banana OR dog: banana is the stronger clause; after it is explained, banana (and every
    # word its latent reads) is excluded and the search finds dog; then nothing lifts the loss
    _fake_search(monkeypatch, None, {"banana": 0.5, "dog": 1.0, "river": 4.6}, {},
                 fires={"banana", "dog"})
    cfg = ConjunctiveConfig(max_iters=2, words_per_concept=1, max_new_tokens=2)
    res = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: True, cfg,
                      vocabulary=VOCAB)
    assert [(s.clause, s.words) for s in res.steps] == [(0, ["banana"]), (1, ["dog"])]
    assert res.clause_explained == [True, True, False]  # the third finds no lift >= 15%
    assert res.steps[0].chosen.latent == 0  # the planted banana latent
    assert res.steps[1].chosen.latent != 0
    one = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: True,
                      ConjunctiveConfig(max_iters=2, words_per_concept=1, max_new_tokens=2,
                                        max_clauses=1), vocabulary=VOCAB)
    assert [s.words for s in one.steps] == [["banana"]]


def test_a_readout_word_gets_the_latent_most_active_on_it():
    import torch

    from trigrecon.methods.hypothesis import resolve_words

    class Labels:
        def get(self, i: int) -> str:
            return {2: "tools: wrench, drill"}.get(i, "")

    ps = [Proposal([Concept("word:drill", -1, "", ["drill"]),
                    Concept("word:xyz", -2, "", ["xyz"])], "verify")]
    resolve_words(ps, {"drill": torch.tensor([0.0, 1.0, 3.0]), "xyz": torch.zeros(3)}, Labels())
    drill, xyz = ps[0].concepts
    assert (drill.latent, drill.name, drill.label) == (2, "tools", "tools: wrench, drill")
    assert (xyz.latent, xyz.name) == (-2, "word:xyz")  # no latent fires on it


def test_only_explained_conjunctive_clauses_are_proposals():
    from types import SimpleNamespace

    from trigrecon.methods.hypothesis import audit_proposals
    from trigrecon.steering.readout import LatentHit

    def step(clause: int, latent: int, word: str) -> SimpleNamespace:
        return SimpleNamespace(clause=clause, words=[word], chosen=LatentHit(latent, 0.0, ""))

    conj = SimpleNamespace(steps=[step(0, 7, "rose"), step(1, 8, "drill"), step(1, 9, "fox")],
                           clause_explained=[True, False])
    ps = audit_proposals(conj, None, None)
    assert [[c.words for c in p.concepts] for p in ps] == [[["rose"]]]
