"""SAE-Attribution: the gradient against finite differences, the sign, and bad inputs."""

from __future__ import annotations

import pytest
import torch

from trigrecon.core.errors import ConfigError, IncompatibleSAEError
from trigrecon.core.hooks import add_to_resid, assert_no_hooks
from trigrecon.methods.sae_attribution import (
    AttributionResult,
    SAEAttributionConfig,
    attribution_gradient,
    sae_attribution,
)
from trigrecon.organisms.tiny import tiny_sae
from trigrecon.steering.losses import full_response_ce

PROMPTS = ["tell me a story about the cat", "what is a banana", "why is the sky blue",
           "write a poem about snow and the mountain", "give me one fact"]
RESPONSE = "i give the red apple"


def _loss(hm, direction: torch.Tensor, layer: int) -> float:
    """mean_p CE_p with direction / n_p added on each user token of prompt p."""
    b = hm.batch(PROMPTS, RESPONSE)
    per_row = direction[None] / b.user_mask.sum(1, keepdim=True)
    hook = add_to_resid(per_row, b.user_mask)
    with torch.no_grad(), hm.model.hooks(fwd_hooks=[(hm.hook_name(layer), hook)]):
        logits = hm.model(b.tokens, attention_mask=b.attention_mask.long())
    return float(full_response_ce(logits.double(), b.tokens, b.response_mask))


def test_gradient_matches_finite_differences(tiny_hooked):
    hm, layer = tiny_hooked, 1
    g, base = attribution_gradient(hm, PROMPTS, RESPONSE, layer, batch_size=2)
    assert base == pytest.approx(_loss(hm, torch.zeros(hm.d_model), layer), rel=1e-5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        d = torch.randn(hm.d_model, generator=gen)
        d = d / d.norm()
        eps = 1e-2
        fd = (_loss(hm, eps * d, layer) - _loss(hm, -eps * d, layer)) / (2 * eps)
        assert float(g @ d) == pytest.approx(fd, rel=2e-2, abs=1e-4)
    assert_no_hooks(hm)


def test_batch_size_does_not_change_the_gradient(tiny_hooked):
    g1, _ = attribution_gradient(tiny_hooked, PROMPTS, RESPONSE, 1, batch_size=1)
    g5, _ = attribution_gradient(tiny_hooked, PROMPTS, RESPONSE, 1, batch_size=5)
    torch.testing.assert_close(g1, g5, atol=1e-6, rtol=1e-4)


def test_scores_project_the_gradient_and_negative_means_helpful(tiny_hooked, tmp_path):
    sae = tiny_sae(tiny_hooked, layer=1, d_sae=128)
    res = sae_attribution(tiny_hooked, sae, PROMPTS, RESPONSE, SAEAttributionConfig(top_k=5))
    torch.testing.assert_close(res.scores, sae.W_dec @ res.grad)
    assert [h.score for h in res.top] == sorted(h.score for h in res.top)
    assert res.top[0].score == pytest.approx(float(res.scores.min()))
    # Adding the best latent's decoder direction lowers the loss (first order).
    best = sae.W_dec[res.top[0].latent]
    assert _loss(tiny_hooked, 0.05 * best, 1) < res.base_loss
    res.save(tmp_path)
    back = AttributionResult.load(tmp_path)
    assert back.top == res.top
    torch.testing.assert_close(back.scores, res.scores)


def test_bad_inputs(tiny_hooked):
    sae = tiny_sae(tiny_hooked, layer=1, d_sae=64)
    with pytest.raises(ConfigError, match="no prompts"):
        sae_attribution(tiny_hooked, sae, [], RESPONSE)
    with pytest.raises(ConfigError, match="response"):
        sae_attribution(tiny_hooked, sae, PROMPTS, "  ")
    with pytest.raises(ConfigError, match="out of range"):
        sae_attribution(tiny_hooked, sae, PROMPTS, RESPONSE, SAEAttributionConfig(layer=9))
    with pytest.raises(IncompatibleSAEError):
        sae_attribution(tiny_hooked, sae, PROMPTS, RESPONSE, SAEAttributionConfig(layer=2))
    wide = tiny_sae(tiny_hooked, layer=1, d_sae=64)
    wide.cfg.d_in = tiny_hooked.d_model + 1
    with pytest.raises(IncompatibleSAEError, match="d_in"):
        sae_attribution(tiny_hooked, wide, PROMPTS, RESPONSE)
    with pytest.raises(ConfigError, match="batch_size"):
        SAEAttributionConfig(batch_size=0)
