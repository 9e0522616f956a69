"""The agent tools on a tiny random model with a planted SAE latent: JSON-Schema signatures,
argument validation, JSON results."""

import json

import jsonschema
import pytest
from conftest import PROMPTS

from trigrecon.agent import TOOLS, AuditTools, tool_schema
from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import FixedStringJudge


@pytest.fixture(scope="module")
def tools(tiny_hooked, planted):
    return AuditTools(tiny_hooked, planted, None, PROMPTS[:4], "the cat is happy",
                      FixedStringJudge("the cat is happy", min_words=2), PROMPTS[4:])


def test_schemas_are_valid_json_schema_with_descriptions(tools):
    schemas = tools.schemas()
    assert [s["name"] for s in schemas] == list(TOOLS)
    for s in schemas:
        jsonschema.Draft202012Validator.check_schema(s["parameters"])
        assert s["description"] and all(p.get("description") for p in
                                         s["parameters"]["properties"].values()), s["name"]
        json.dumps(s)
    steer = tool_schema(tools.steer)["parameters"]
    assert steer["properties"]["latent"] == {"anyOf": [{"type": "integer"}, {"type": "null"}],
                                             "default": None, "description": steer[
                                                 "properties"]["latent"]["description"]}
    assert tool_schema(tools.test_candidate)["parameters"]["required"] == ["words"]
    rank = tool_schema(tools.rank_latents)["parameters"]["properties"]["method"]
    assert rank["enum"] == ["sae_attribution", "supervised_sae_melbo"]


def test_results_are_json(tools):
    ranked = tools.call("rank_latents", {"k": 3})
    assert len(ranked["latents"]) == 3 and {"latent", "score", "label"} <= set(ranked["latents"][0])
    melbo = tools.call("rank_latents", {"method": "supervised_sae_melbo", "k": 2})
    assert melbo["method"] == "supervised_sae_melbo" and len(melbo["latents"]) <= 2
    desc = tools.call("describe_latent", {"latent": 0, "n_words": 3})
    assert desc["top_words"][0]["word"] == "banana"  # the planted latent reads 'banana'
    steer = tools.call("steer", {"latent": 0, "n_prompts": 2, "max_new_tokens": 4})
    assert 0 <= steer["action_rate"] <= 1 and len(steer["generations"]) == 2
    test = tools.call("test_candidate", {"words": ["banana"], "n_prompts": 2, "n_control": 2})
    assert set(test) >= {"action_rate", "control_rate", "baseline_rate", "works"}
    score = tools.call("score_candidate", {"candidate": "banana", "latents": [0], "n_prompts": 2})
    assert score["interp"] > 0  # inserting 'banana' switches the planted latent on
    for out in (ranked, desc, steer, test, score):
        json.dumps(out)


@pytest.mark.parametrize("name,args,match", [
    ("rank_latents", {"method": "magic"}, "invalid arguments"),
    ("rank_latents", {"k": "3"}, "invalid arguments"),
    ("test_candidate", {}, "'words' is a required property"),
    ("steer", {"latent": 0, "colour": 1}, "Additional properties"),
    ("nope", {}, "unknown tool"),
    ("steer", {}, "exactly one of latent or vector"),
    ("describe_latent", {"latent": 10_000}, "not in 0.."),
])
def test_bad_calls_are_explained(tools, name, args, match):
    with pytest.raises(ConfigError, match=match):
        tools.call(name, args)
