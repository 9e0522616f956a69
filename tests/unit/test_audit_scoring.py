"""Candidate scoring in the audit output: verification candidates scored both ways."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.methods.audit import (
    AuditResult,
    CandidateScoringConfig,
    audit,
    quick_config,
    score_audit_candidates,
)
from trigrecon.methods.verify import Candidate, VerifyConfig, VerifyResult
from trigrecon.organisms.tiny import tiny_sae

PROMPTS = ["tell me a story about the cat", "what is a banana", "why is the sky blue",
           "write a poem about snow and the mountain"]
RESPONSE = "i give the red apple"


def _result(candidates: list[Candidate]) -> AuditResult:
    res = AuditResult("tiny", RESPONSE, 4, 4, ["verify"], {}, {})
    res.verification = VerifyResult([], {}, candidates, 0.0, 0.0, [], {})
    return res


def test_table_scores_verification_and_extra_candidates(tiny_hooked, planted, monkeypatch):
    import trigrecon.core.generate as gen

    def fake_generate(hm, prompts, **kw):  # the model "shows the action" when banana is named
        return ["ACTION" if "banana" in p.split() else "sure" for p in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)
    res = _result([Candidate(["banana"], [0], 0.5), Candidate(["cat", "banana"], [0, -1], 0.2)])
    table = score_audit_candidates(tiny_hooked, planted, res, PROMPTS, lambda t: t == "ACTION",
                                   extra={"dog": "rl-recovered"})
    rows = {r.candidate: r for r in table.rows}
    assert [r.candidate for r in table.rows] == ["banana", "cat banana", "dog"]
    assert rows["banana"].source == "verify" and rows["dog"].source == "rl-recovered"
    assert (rows["banana"].asr, rows["banana"].reward, rows["banana"].works) == (1.0, 1.0, True)
    assert rows["cat banana"].asr == 1.0 and rows["cat banana"].reward == 0.75  # length penalty
    assert (rows["dog"].asr, rows["dog"].works) == (0.0, False)
    # latent 0 reads 'banana': inserting it activates the latent more than 'dog' does
    assert table.interp_name == "SAE latents [0]"
    assert rows["banana"].interp is not None and rows["dog"].interp is not None
    assert rows["banana"].interp > rows["dog"].interp
    assert all(math.isfinite(r.interp or 0.0) for r in table.rows)
    assert "| 1 | `banana` | verify | 100% |" in table.to_markdown()


def test_audit_output_carries_the_table(tiny_hooked, planted, tmp_path):
    cfg = quick_config()
    cfg.melbo.steps = 5
    cfg.verify = VerifyConfig(n_latents=2, max_new_tokens=3, vocabulary_limit=30)
    cfg.max_new_tokens = 3
    cfg.scoring = CandidateScoringConfig(top_k=3, n_prompts=2)
    res = audit(tiny_hooked, planted, None, PROMPTS, RESPONSE, lambda t: False,
                methods=["sae_attribution", "melbo", "verify"], cfg=cfg,
                eval_prompts=PROMPTS[:2])
    assert res.candidate_scores is not None
    rows = res.candidate_scores.rows
    assert 1 <= len(rows) <= 3 and {r.source for r in rows} == {"verify"}
    assert all(r.asr == 0.0 and not r.works for r in rows)
    assert {"directions L" + str(res.steering["melbo"].layer)} <= set(rows[0].extra)
    res.save(tmp_path)
    data = AuditResult.load_json(tmp_path)
    assert data["candidate_scores"]["rows"][0]["candidate"] == rows[0].candidate
    assert res.hypothesis is not None  # saved with its expression, for reports and agents
    assert data["hypothesis"]["expression"] == res.hypothesis.expression
    assert "## candidate scoring" in (tmp_path / "latents.md").read_text()
    json.dumps(data)
    cfg.scoring = CandidateScoringConfig(enabled=False)
    off = audit(tiny_hooked, planted, None, PROMPTS, RESPONSE, lambda t: False,
                methods=["sae_attribution", "verify"], cfg=cfg, eval_prompts=PROMPTS[:2])
    assert off.candidate_scores is None


def test_scoring_errors(tiny_hooked, planted):
    with pytest.raises(ConfigError, match="no candidates"):
        score_audit_candidates(tiny_hooked, planted, _result([]), PROMPTS, lambda t: False)
    with pytest.raises(ConfigError, match="positive"):
        CandidateScoringConfig(top_k=0)


def test_labelled_only_switches_off_unlabelled_latents(tiny_hooked):
    from trigrecon.core.labels import LatentLabels
    from trigrecon.methods.audit import labelled_only
    from trigrecon.methods.sae_melbo import SAEMelboConfig, sae_melbo

    sae = tiny_sae(tiny_hooked, layer=1, d_sae=32)
    labels = LatentLabels({i: f"latent {i}" for i in range(0, 32, 2)}, "src", "model", "", "")
    masked = labelled_only(sae, labels)
    off = torch.arange(1, 32, 2)
    assert masked is not sae and sae.W_dec[off].abs().sum() > 0  # the original is untouched
    assert masked.W_dec[off].abs().max() == 0
    z = masked.encode(torch.randn(16, sae.cfg.d_in) * 3)
    assert z[:, off].abs().max() == 0
    cfg = SAEMelboConfig(n_vectors=2, steps=3)
    res = sae_melbo(tiny_hooked, masked, PROMPTS, RESPONSE, cfg)
    assert res.codes is not None and res.codes[:, off].abs().max() == 0
    assert labelled_only(sae, LatentLabels({}, "src", "model", "", "")) is sae


def test_cli_output_folder_is_named_after_the_organism(tmp_path):
    """An organism given as a folder writes to out/<its name>, not into the organism."""
    from trigrecon.cli import out_folder

    assert out_folder(tmp_path, "fruit_refusal") == tmp_path / "fruit_refusal"
    assert out_folder(tmp_path, "/data/zoo/weather_music") == tmp_path / "weather_music"
    assert out_folder(tmp_path, "zoo/weather_music/") == tmp_path / "weather_music"
