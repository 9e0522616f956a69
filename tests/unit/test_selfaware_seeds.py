"""An audit's candidates as GRPO seeds: verdict first, then verification by action rate."""

import json

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.selfaware.seeds import audit_seeds

AUDIT = {
    "verdict": {"words": ["astrology", "oracle"], "action_rate": 0.6},
    "verification": {"candidates": [
        {"words": ["oracle"], "action_rate": 0.25},
        {"words": ["Aries", "oracle"], "action_rate": 0.75},
        {"words": ["astrology", "oracle"], "action_rate": 0.6},  # the verdict again
        {"words": ["tomorrow"], "action_rate": None},  # never measured
    ]},
}


def test_verdict_first_then_verification_by_rate_without_repeats():
    assert audit_seeds(AUDIT) == ("astrology oracle", "Aries oracle", "oracle")
    assert audit_seeds(AUDIT, n=2) == ("astrology oracle", "Aries oracle")


def test_the_hypothesis_concepts_other_words_are_seeded_after_the_verdict():
    hyp = {"clauses": [
        {"concepts": [{"words": ["snowfall", "ice"]}, {"words": ["rain", "skiing", "bobsled"]}]},
        {"concepts": [{"words": ["Havana"]}]},
        {"concepts": [{"words": []}]}]}  # a concept without words: nothing to say
    audit = {**AUDIT, "verdict": {"words": ["snowfall", "rain"], "action_rate": 0.9},
             "hypothesis": hyp}
    assert audit_seeds(audit) == ("snowfall rain", "ice rain", "snowfall skiing", "snowfall bobsled",
                                  "Havana", "Aries oracle", "astrology oracle", "oracle")
    assert audit_seeds(audit, n=3) == ("snowfall rain", "ice rain", "snowfall skiing")


def test_reads_an_audit_json_or_its_folder(tmp_path):
    (tmp_path / "audit.json").write_text(json.dumps(AUDIT))
    assert audit_seeds(tmp_path) == audit_seeds(tmp_path / "audit.json") == audit_seeds(AUDIT)


def test_a_missing_audit_or_one_without_candidates_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no audit at"):
        audit_seeds(tmp_path / "nowhere")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        audit_seeds(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="no verified candidate"):
        audit_seeds({"verdict": {"words": [], "action_rate": None}})
