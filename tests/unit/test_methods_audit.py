"""The audit entry point: one seed makes it reproducible, audit.json records prompts and config
and is strict JSON, labels are checked against the SAE they are used with, and a response with
words the tokenizer does not know is refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

from trigrecon.core.errors import ConfigError, IncompatibleSAEError
from trigrecon.core.labels import LatentLabels, check_labels
from trigrecon.methods.audit import AuditConfig, AuditResult, audit, quick_config
from trigrecon.methods.verify import VerifyConfig, verify
from trigrecon.organisms.tiny import tiny_sae

PROMPTS = ["tell me a story about the cat", "what is a banana", "why is the sky blue",
           "write a poem about snow and the mountain"]
EVALS = ["give me one fact", "how fast is the red car"]
RESPONSE = "the red apple is good"
METHODS = ["sae_attribution", "supervised_sae_melbo", "melbo", "verify"]


def strict(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def judge(text: str) -> bool:  # discriminates, so verification's ranking depends on generations
    return "apple" in text.split()


def small(seed: int) -> AuditConfig:
    cfg = quick_config()
    for c in (cfg.melbo, cfg.supervised_sae_melbo):
        c.steps, c.n_vectors = 4, 2
    cfg.verify = VerifyConfig(n_latents=2, max_new_tokens=3, vocabulary_limit=30, n_control=3)
    cfg.max_new_tokens, cfg.seed = 3, seed
    cfg.scoring.enabled = False
    return cfg


def run(hm, sae, seed: int) -> AuditResult:
    return audit(hm, sae, None, PROMPTS, RESPONSE, judge, METHODS, small(seed), eval_prompts=EVALS)


@pytest.mark.slow
def test_same_seed_same_audit_and_the_seed_reaches_every_stage(tiny_hooked, planted, tmp_path):
    a, b = run(tiny_hooked, planted, 3), run(tiny_hooked, planted, 3)
    for m in ("supervised_sae_melbo", "melbo"):
        assert torch.equal(a.steering[m].vectors, b.steering[m].vectors), m
    assert torch.equal(a.attribution.scores, b.attribution.scores)
    assert a.rankings == b.rankings and a.word_rankings == b.word_rankings
    assert a.verification is not None and b.verification is not None
    assert a.verification.candidates == b.verification.candidates
    assert a.verification.control_words == b.verification.control_words
    c = run(tiny_hooked, planted, 4)
    assert not torch.equal(a.steering["melbo"].vectors, c.steering["melbo"].vectors)
    assert a.verification.control_words != c.verification.control_words  # the control words follow the seed
    for m in ("melbo", "supervised_sae_melbo", "sae_melbo", "supervised_melbo", "verify"):
        assert a.config[m]["seed"] == 3 and c.config[m]["seed"] == 4, m
    a.save(tmp_path / "a")
    data = strict((tmp_path / "a" / "audit.json").read_text())
    assert data["prompts"] == PROMPTS and data["eval_prompts"] == EVALS
    assert data["config"]["seed"] == 3 and data["config"]["melbo"]["steps"] == 4
    assert data["config"]["verify"]["n_control"] == 3
    for f in (tmp_path / "a").rglob("*.json"):
        strict(f.read_text())


def test_labels_are_checked_against_the_sae_they_are_used_with(tiny_hooked):
    sae = tiny_sae(tiny_hooked, layer=1, d_sae=32)
    sae.cfg.metadata.neuronpedia_id = "tiny/1-res-32"
    ours = LatentLabels({0: "fruit", 5: "snow"}, "1-res-32", "tiny")
    check_labels(ours, sae)
    other = LatentLabels({0: "fruit"}, "2-res-32", "tiny")  # loaded without sae=: never checked
    with pytest.raises(IncompatibleSAEError, match="tiny/2-res-32.*tiny/1-res-32"):
        audit(tiny_hooked, sae, other, PROMPTS, RESPONSE, judge, ["sae_attribution"])
    from trigrecon.methods.audit import labelled_only

    with pytest.raises(IncompatibleSAEError, match="tiny/2-res-32"):
        labelled_only(sae, other)  # also when called on its own
    wide = LatentLabels({0: "fruit", 40: "wider"}, "", "")
    with pytest.raises(IncompatibleSAEError, match="latent 40.*d_sae=32"):
        audit(tiny_hooked, sae, wide, PROMPTS, RESPONSE, judge, ["sae_attribution"])


def test_unknown_words_in_the_response_or_candidates_are_named(tiny_hooked, planted):
    with pytest.raises(ConfigError, match=r"'zyzzyva', 'quux'"):
        audit(tiny_hooked, planted, None, PROMPTS, "the red zyzzyva is quux", judge,
              ["sae_attribution"])
    with pytest.raises(ConfigError, match="'zyzzyva'"):
        tiny_hooked.batch(PROMPTS, "the zyzzyva")
    from trigrecon.steering.readout import LatentHit

    with pytest.raises(ConfigError, match="verification candidates .*'quux'"):
        verify(tiny_hooked, planted, [LatentHit(0, 1.0)], EVALS, judge,
               VerifyConfig(n_latents=1, max_new_tokens=2, vocabulary_limit=30),
               extra_words=[["quux"]])


def test_an_interrupted_audit_resumes_from_its_finished_stages(tiny_hooked, planted, tmp_path,
                                                                monkeypatch):
    """Each method's result is saved as it finishes; a rerun with the same inputs reuses them
    (the methods are not called again), other settings are refused, and saving the audit
    removes the stages."""
    import trigrecon.methods.audit as A
    from trigrecon.core.stages import StaleStageError

    out = tmp_path / "audit"
    stages = A.stages_folder(out)
    calls: list[str] = []
    real_verify = A.verify

    def failing_verify(*args, **kwargs):
        calls.append("verify")
        raise KeyboardInterrupt  # the session ends during verification

    monkeypatch.setattr(A, "verify", failing_verify)
    with pytest.raises(KeyboardInterrupt):
        audit(tiny_hooked, planted, None, PROMPTS, RESPONSE, judge, METHODS, small(3),
              eval_prompts=EVALS, checkpoint=stages)
    done = {p.name: json.loads((p / "stage.json").read_text())["done"] for p in stages.iterdir()}
    assert done == {"sae_attribution": True, "supervised_sae_melbo": True, "melbo": True,
                    "verify": False}
    first = {m: A.SteeringResult.load(stages / m).vectors for m in ("melbo", "supervised_sae_melbo")}

    def no_rerun(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(A, "verify", real_verify)
    monkeypatch.setattr(A, "sae_attribution", no_rerun)
    monkeypatch.setattr(A, "sae_melbo", no_rerun)
    monkeypatch.setattr(A, "melbo", no_rerun)
    res = audit(tiny_hooked, planted, None, PROMPTS, RESPONSE, judge, METHODS, small(3),
                eval_prompts=EVALS, checkpoint=stages)
    for m, v in first.items():
        assert torch.equal(res.steering[m].vectors, v)
    assert res.verification is not None and (stages / "verify" / "stage.json").exists()
    assert res.timings["melbo"] > 0
    with pytest.raises(StaleStageError, match=r"config.seed.*delete that folder"):
        audit(tiny_hooked, planted, None, PROMPTS, RESPONSE, judge, METHODS, small(4),
              eval_prompts=EVALS, checkpoint=stages)
    res.save(out)
    assert (out / "audit.json").exists() and not stages.exists()
