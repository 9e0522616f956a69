"""MELBO, supervised MELBO and SAE-MELBO on a tiny random model: invariants of the trained vectors."""

from __future__ import annotations

import pytest
import torch

from trigrecon.core.errors import ConfigError, IncompatibleSAEError, OptimizationError
from trigrecon.core.hooks import assert_no_hooks
from trigrecon.methods.common import SteeringResult
from trigrecon.methods.melbo import MelboConfig, melbo
from trigrecon.methods.sae_melbo import SAEMelboConfig, sae_melbo
from trigrecon.methods.supervised_melbo import SupervisedMelboConfig, supervised_melbo
from trigrecon.organisms.tiny import tiny_sae
from trigrecon.steering.forward import SteeredForward
from trigrecon.steering.ortho import max_abs_cos

PROMPTS = ["tell me a story about the cat", "what is a banana", "why is the sky blue",
           "write a poem about snow and the mountain"]
RESPONSE = "i give the red apple"


@pytest.fixture(scope="module")
def sae(tiny_hooked):
    return tiny_sae(tiny_hooked, layer=1, d_sae=128)


def _ce(hm, vectors):
    fwd = SteeredForward(hm, hm.batch(PROMPTS, RESPONSE), source=1)
    return fwd.response_ce(vectors)


def test_melbo_vectors_have_norm_r_and_are_orthogonal(tiny_hooked, sae):
    cfg = MelboConfig(layer=1, target_layer=3, n_vectors=6, vectors_per_round=3, steps=15,
                      norm=2.0)
    res = melbo(tiny_hooked, PROMPTS, cfg, sae=sae)
    assert res.vectors.shape == (6, tiny_hooked.d_model)
    assert max_abs_cos(res.vectors) <= 1e-4  # within and across the two rounds
    torch.testing.assert_close(res.vectors.norm(dim=-1), torch.full((6,), 2.0 * res.resid_scale),
                               rtol=1e-4, atol=1e-4)
    # objective increased from the first step to the end
    assert (res.history[-1] > res.history[0]).all()
    assert res.ranking(3) and res.ranking(3)[0].label == ""
    assert sorted(res.order) == list(range(6))


def test_supervised_melbo_lowers_the_loss(tiny_hooked, sae, tmp_path):
    cfg = SupervisedMelboConfig(layer=1, n_vectors=3, steps=25, lr=0.05)
    res = supervised_melbo(tiny_hooked, PROMPTS, RESPONSE, cfg, sae=sae)
    assert max_abs_cos(res.vectors) <= 1e-4
    base = float(_ce(tiny_hooked, torch.zeros(1, tiny_hooked.d_model))[0])
    assert min(res.final_loss) < base - 0.1
    torch.testing.assert_close(torch.tensor(res.final_loss), _ce(tiny_hooked, res.vectors),
                               atol=1e-4, rtol=1e-4)
    assert res.final_loss[res.best] == min(res.final_loss)
    res.save(tmp_path)
    back = SteeringResult.load(tmp_path)
    torch.testing.assert_close(back.vectors, res.vectors)
    assert back.readouts == res.readouts and back.order == res.order
    assert_no_hooks(tiny_hooked)


@pytest.mark.parametrize("objective", ["supervised", "unsupervised"])
def test_sae_melbo_vector_is_code_times_decoder(tiny_hooked, sae, objective):
    cfg = SAEMelboConfig(objective=objective, n_vectors=4, steps=10, target_layer=3)
    res = sae_melbo(tiny_hooked, sae, PROMPTS, RESPONSE, cfg)
    assert res.codes is not None and res.codes.shape == (4, sae.cfg.d_sae)
    assert torch.equal(res.vectors, res.codes @ sae.W_dec)
    assert max_abs_cos(res.vectors) <= 1e-4
    top = res.ranking(5)
    best_code = res.codes[res.best]
    readout = next(r for r in res.readouts if r.index == res.best)
    assert readout.code[0].latent == int(best_code.argmax())
    if objective == "supervised":  # ranked by effect: the CE rise when one latent is dropped
        assert top == readout.effect[:5] and len(readout.effect) == min(20, int((best_code != 0).sum()))
        assert [h.score for h in top] == sorted((h.score for h in top), reverse=True)
        for hit in top[:2]:
            dropped = best_code.clone()
            dropped[hit.latent] = 0
            ce = _ce(tiny_hooked, torch.stack([best_code @ sae.W_dec, dropped @ sae.W_dec]))
            assert hit.score == pytest.approx(float(ce[1] - ce[0]), abs=1e-4)
    else:
        assert top[0].latent == int(best_code.argmax()) and not readout.effect
        torch.testing.assert_close(res.vectors.norm(dim=-1),
                                   torch.full((4,), res.resid_scale), rtol=1e-4, atol=1e-4)


def test_nan_during_optimisation_is_an_error(tiny_hooked, monkeypatch):
    import trigrecon.methods.supervised_melbo as sm

    real = SteeredForward.response_ce
    calls = {"n": 0}

    def poisoned(self, vectors):
        calls["n"] += 1
        out = real(self, vectors)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(sm.SteeredForward, "response_ce", poisoned)
    with pytest.raises(OptimizationError, match="NaN"):
        supervised_melbo(tiny_hooked, PROMPTS, RESPONSE, SupervisedMelboConfig(steps=10))
    assert_no_hooks(tiny_hooked)


def test_divergence_is_an_error(tiny_hooked):
    cfg = SupervisedMelboConfig(steps=20, lr=5.0, l2=0.0, max_norm=0.5)
    with pytest.raises(OptimizationError, match="diverged"):
        supervised_melbo(tiny_hooked, PROMPTS, RESPONSE, cfg)


def test_bad_inputs(tiny_hooked, sae):
    with pytest.raises(ConfigError, match="no prompts"):
        melbo(tiny_hooked, [])
    with pytest.raises(ConfigError, match="prompts must be a list"):
        melbo(tiny_hooked, "one prompt")
    with pytest.raises(ConfigError, match="target_layer"):
        melbo(tiny_hooked, PROMPTS, MelboConfig(layer=2, target_layer=1))
    with pytest.raises(ConfigError, match="out of range"):
        melbo(tiny_hooked, PROMPTS, MelboConfig(layer=1, target_layer=7))
    with pytest.raises(ConfigError, match="response"):
        supervised_melbo(tiny_hooked, PROMPTS, "")
    with pytest.raises(ConfigError, match="needs the target response"):
        sae_melbo(tiny_hooked, sae, PROMPTS, None, SAEMelboConfig())
    with pytest.raises(IncompatibleSAEError):
        sae_melbo(tiny_hooked, sae, PROMPTS, RESPONSE, SAEMelboConfig(layer=0))
    for bad in (dict(n_vectors=0), dict(lr=-1.0), dict(steps=0), dict(norm=0.0), dict(p=-1.0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            MelboConfig(**bad)
    with pytest.raises(ConfigError, match="objective"):
        SAEMelboConfig(objective="both")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="l2"):
        SupervisedMelboConfig(l2=-1.0)
