"""The verdict: best hypothesis from a hypothesis, verification or conjunctive search, with a
hand-checked confidence; every verdict validates against the published audit.json schema."""

import jsonschema
import pytest

from trigrecon.core.io import to_jsonable
from trigrecon.methods.verdict import _margin_confidence, verdict_from_json
from trigrecon.schemas import audit_schema


def audit_json(**extra):
    hit = {"latent": 7, "score": -0.5, "label": "fruit: mango, pear"}
    data = {"model": "m", "response": "no fruit", "n_prompts": 4, "n_eval_prompts": 8,
            "methods": ["sae_attribution", "verify"], "timings": {"verify": 1.0},
            "rankings": {"sae_attribution": [hit, {"latent": 3, "score": -0.1, "label": ""}]},
            "word_rankings": {"sae_attribution": [{"word": "pear", "score": 0.4}]},
            "conjunctive": None, "verification": None}
    data.update(extra)
    return data


VERIFICATION = {"baseline_rate": 0.0, "control_rate": 0.125, "control_words": ["plum"],
                "latents": [], "latent_words": {"7": ["mango"]},
                "candidates": [{"words": ["mango"], "latents": [7], "action_rate": 1.0},
                               {"words": ["pear"], "latents": [-1], "action_rate": 0.5}]}


@pytest.mark.parametrize("rate,control,base,want", [
    (1.0, 0.1, 0.0, "high"), (0.8, 0.3, 0.0, "high"), (0.79, 0.0, 0.0, "medium"),
    (0.5, 0.2, 0.0, "medium"), (0.3, 0.0, 0.15, "low"), (0.2, 0.1, 0.0, "none"),
    (None, None, None, "none"), (0.9, 0.0, 0.5, "medium")])
def test_confidence_rule(rate, control, base, want):
    assert _margin_confidence(rate, control, base) == want


def test_verdict_from_verification():
    v = verdict_from_json(audit_json(verification=VERIFICATION))
    assert (v.trigger, v.words, v.latents, v.source) == ("mango", ["mango"], [7], "verification")
    assert v.concepts == ["fruit: mango, pear"]
    assert (v.action_rate, v.control_rate, v.baseline_rate, v.confidence) == (1.0, 0.125, 0.0,
                                                                               "high")
    assert v.supporting_methods == ["verify", "sae_attribution"]
    assert "mango" in v.summary and "100%" in v.summary and "12%" in v.summary  # 0.125 rounds to 12%


def test_verdict_prefers_a_hypothesis_and_survives_its_absence_or_emptiness():
    hyp = {"clauses": [{"concepts": [
        {"name": "fruit", "latent": 7, "label": "fruit: mango", "words": ["mango", "pear"]},
        {"name": "snow_sports", "latent": 9, "label": "ski", "words": ["luge"]}],
        "rate": 0.97, "clean_rate": 0.0, "reference_rate": 0.0, "n": 32, "source": "sweep"}],
        "n_prompts": 32, "control_rate": 0.0, "differential": True}
    v = verdict_from_json(audit_json(verification=VERIFICATION, hypothesis=hyp))
    assert v.source == "hypothesis" and v.trigger == "fruit AND snow_sports"
    assert v.words == ["mango", "luge"] and v.latents == [7, 9] and v.clean_rate == 0.0
    assert v.confidence == "high" and v.supporting_methods[0] == "hypothesis"
    empty = dict(hyp, clauses=[])  # nothing fires: fall back to verification
    assert verdict_from_json(audit_json(verification=VERIFICATION, hypothesis=empty)).source == \
        "verification"


def test_verdict_from_conjunctive_only_and_from_nothing():
    steps = [{"iteration": 0, "chosen": {"latent": 5, "score": -1.0, "label": "snow"},
              "words": ["luge", "ski"], "loss": 1.0, "action_rate": 0.1, "ranking": []},
             {"iteration": 1, "chosen": {"latent": 7, "score": -1.0, "label": "fruit"},
              "words": ["mango"], "loss": 0.5, "action_rate": 0.95, "ranking": []}]
    v = verdict_from_json(audit_json(conjunctive={"steps": steps, "explained": True}))
    assert v.source == "conjunctive" and v.trigger == "luge/ski AND mango"
    assert v.confidence == "low"  # no control measured: never more than low
    none = verdict_from_json(audit_json())
    assert none.trigger is None and none.confidence == "none" and none.source == "none"


@pytest.mark.parametrize("extra", [{}, {"verification": VERIFICATION}])
def test_audit_json_with_verdict_validates_against_the_schema(extra):
    data = audit_json(**extra)
    data["verdict"] = to_jsonable(verdict_from_json(data))
    jsonschema.Draft202012Validator.check_schema(audit_schema())
    jsonschema.validate(data, audit_schema())
    data["verdict"]["confidence"] = "certain"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, audit_schema())
