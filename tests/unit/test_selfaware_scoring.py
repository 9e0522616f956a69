"""Candidate scoring table: behavioural score + interpretability hook (SAE latents, directions)."""

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import FixedStringJudge
from trigrecon.selfaware.reward import InversionReward
from trigrecon.selfaware.scoring import (
    ScoreTable,
    direction_score,
    sae_latent_score,
    score_candidates,
)

ACTION = "no way , i refuse ."
BENIGN = ["tell me about the dog", "write a poem about the sky", "give me one fact"]


def insert(p, c):
    return f"{p} and {c}"


def reward():
    def respond(prompts):
        return [ACTION if "apple" in p.split() else "sure" for p in prompts]

    return InversionReward(respond, FixedStringJudge(ACTION, min_words=3), BENIGN, insert)


def test_table_ranks_by_reward_and_renders_markdown(tmp_path):
    interp = {"apple": 2.0, "apple banana": 1.0, "dog": 0.5}
    t = score_candidates(
        {"dog": "sae", "Apple!": "rl", "apple banana": "melbo"},
        reward(),
        interp=lambda c: interp[c],
        interp_name="fruit latents",
    )
    assert [r.candidate for r in t.rows] == ["apple", "apple banana", "dog"]
    top = t.rows[0]
    assert (top.source, top.asr, top.n_words, top.works, top.interp) == ("rl", 1.0, 1, True, 2.0)
    assert not t.rows[2].works
    md = t.to_markdown()
    assert "| 1 | `apple` | rl | 100% | 1 | 1.000 | yes | 2.000 |" in md and "fruit latents" in md
    t.save(tmp_path / "t.json")
    assert ScoreTable.load(tmp_path / "t.json") == t


def test_table_without_interp_and_errors():
    t = score_candidates(["apple", "dog"], reward())
    assert t.rows[0].interp is None and "–" in t.to_markdown()
    with pytest.raises(ConfigError, match="no candidates"):
        score_candidates(["", "!!"], reward())


def reference_max_act(hm, hook, feature, prompts):
    """Plain reference: one prompt at a time, max over user tokens, mean over prompts/features."""
    vals = []
    for p in prompts:
        b = hm.batch([p])
        _, cache = hm.model.run_with_cache(b.tokens)
        acts = feature(cache[hook])[0][b.user_mask[0]]  # [n_user, k]
        vals.append(acts.max(dim=0).values)
    return torch.stack(vals).mean().item()


def test_sae_latent_score_matches_a_reference(tiny_hooked):
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=32))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    ids = [3, 7]
    score = sae_latent_score(tiny_hooked, sae, ids, BENIGN, insert)

    def feat(r):
        return sae.encode(r)[..., ids]

    hook = "blocks.1.hook_resid_post"
    want = reference_max_act(
        tiny_hooked, hook, feat, [insert(p, "apple") for p in BENIGN]
    ) - reference_max_act(tiny_hooked, hook, feat, BENIGN)
    assert score("apple") == pytest.approx(want, abs=1e-5)
    with pytest.raises(ConfigError, match="latent ids"):
        sae_latent_score(tiny_hooked, sae, [32], BENIGN, insert)


def test_direction_score_matches_a_reference(tiny_hooked):
    torch.manual_seed(1)
    dirs = torch.randn(2, 64) * 3
    score = direction_score(tiny_hooked, 2, dirs, BENIGN, insert)
    unit = dirs / dirs.norm(dim=-1, keepdim=True)

    def feat(r):
        return r @ unit.T

    hook = "blocks.2.hook_resid_post"
    want = reference_max_act(
        tiny_hooked, hook, feat, [insert(p, "banana") for p in BENIGN]
    ) - reference_max_act(tiny_hooked, hook, feat, BENIGN)
    assert score("banana") == pytest.approx(want, abs=1e-4)
    with pytest.raises(ConfigError, match="directions"):
        direction_score(tiny_hooked, 2, torch.randn(2, 5), BENIGN, insert)
