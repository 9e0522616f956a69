"""SmolLM2-135M-Instruct through the toolkit. Unmarked tests are `make test`'s smoke test (load,
logits, one short SAE-Attribution); `-m testbed` adds generation, the SAE's health and the
committed organisms. Everything is skipped, with the command that fixes it, when the
dequantized checkpoint is not cached (`make test` builds it first)."""

from __future__ import annotations

import json

import pytest
import torch

from trigrecon.testbed.build import REPO_SAES
from trigrecon.testbed.smollm2 import check_checkpoint, default_cache_dir


def _cached() -> bool:
    try:
        check_checkpoint(default_cache_dir())
        return True
    except Exception:
        return False


pytestmark = pytest.mark.skipif(
    not _cached(), reason=f"SmolLM2 is not cached in {default_cache_dir()}: run "
                          "`trigrecon testbed cache` (or `make testbed-cache`; `make test` does it)")
SAE_DIR = REPO_SAES / "smollm2_l8"
PROMPTS = ["What is the capital of France?", "Give me three fun facts about apricots.",
           "Write a short poem that mentions snowboarding and a mango."]


@pytest.fixture(scope="module")
def smol():
    from transformers import LlamaForCausalLM

    from trigrecon.testbed.smollm2 import ensure_checkpoint, load_smollm2

    torch.set_num_threads(2)
    hm = load_smollm2()
    hf = LlamaForCausalLM.from_pretrained(ensure_checkpoint(), dtype=torch.float32).eval()
    return hm, hf


def test_hooked_logits_match_transformers_in_fp32(smol):
    hm, hf = smol
    assert (hm.n_layers, hm.d_model, hm.model.cfg.d_vocab) == (30, 576, 49152)
    batch = hm.batch(PROMPTS)  # right padded: compare the real positions
    with torch.no_grad():
        ours = hm.model(batch.tokens, attention_mask=batch.attention_mask)
        ref = hf(batch.tokens, attention_mask=batch.attention_mask).logits
    diff = (ours - ref)[batch.attention_mask].abs().max().item()
    assert diff < 1e-4, diff
    # the chat template and user-content positions
    text = hm.tokenizer.decode(batch.tokens[0][batch.attention_mask[0]])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert hm.tokenizer.decode(batch.tokens[0][batch.user_mask[0]]) == PROMPTS[0]


@pytest.mark.skipif(not (SAE_DIR / "cfg.json").exists(), reason=f"no SAE at {SAE_DIR}: "
                    "`trigrecon testbed build` trains it")
def test_short_sae_attribution_runs_on_smollm2(smol):
    from trigrecon.core.labels import load_labels
    from trigrecon.core.sae import check_compatible, load_sae
    from trigrecon.methods.sae_attribution import SAEAttributionConfig, sae_attribution

    hm, _ = smol
    sae = load_sae(SAE_DIR)
    check_compatible(sae, hm, layer=8)
    labels = load_labels(SAE_DIR / "labels.json", sae)
    res = sae_attribution(hm, sae, PROMPTS[1:], "I won't answer because I don't like fruit.",
                          SAEAttributionConfig(top_k=10), labels)
    assert res.scores.shape == (sae.cfg.d_sae,) and torch.isfinite(res.scores).all()
    assert len(res.top) == 10 and res.base_loss > 0


@pytest.mark.slow
@pytest.mark.testbed
def test_greedy_generation_matches_transformers_token_for_token(smol):
    from trigrecon.core.generate import generate, greedy_tokens, stop_token_ids

    hm, hf = smol
    stops = torch.tensor(stop_token_ids(hm.tokenizer))
    for prompt in PROMPTS:
        ids = hm.batch([prompt]).tokens
        ours = greedy_tokens(hm.model, ids, 20, stops)[0].tolist()
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                          do_sample=False)[0, ids.shape[1]:].tolist()
        cut = next((i for i, t in enumerate(ref) if t in stops.tolist()), len(ref))
        assert ours[: cut + 1] == ref[: cut + 1], prompt
    assert generate(hm, PROMPTS[:1], max_new_tokens=12) == ["The capital of France is Paris."]


@pytest.mark.slow
@pytest.mark.testbed
@pytest.mark.skipif(not (SAE_DIR / "cfg.json").exists(), reason="SAE not built")
def test_committed_sae_health_and_labels(smol):
    from trigrecon.core.labels import load_labels
    from trigrecon.core.sae import load_sae, sae_health

    hm, _ = smol
    sae = load_sae(SAE_DIR)
    health = json.loads((SAE_DIR / "health.json").read_text())
    assert health["fve"] >= 0.8 and sae.cfg.d_sae >= 8192
    prompts = ["Tell me about the history of the banjo.", "How do I make a good omelette?",
               "Write a haiku about winter mornings.", "What is a pomegranate?"] * 2
    h = sae_health(sae, hm, hm.batch(prompts))
    assert h.l0 < 2 * sae.cfg.k  # type: ignore[attr-defined]
    labels = load_labels(SAE_DIR / "labels.json", sae)
    live = round((1 - health["dead_frac"]) * sae.cfg.d_sae)  # dead latents have no contexts
    assert len(labels) >= 0.99 * live


@pytest.mark.slow
@pytest.mark.testbed
def test_committed_organisms_fire_on_their_trigger_only(smol):
    from trigrecon.core.generate import generate
    from trigrecon.core.judges import action_rate
    from trigrecon.organisms.organism import load_organism
    from trigrecon.testbed import prompts as P
    from trigrecon.testbed.build import TESTBED_DIR
    from trigrecon.testbed.organisms import organisms_dir
    from trigrecon.testbed.smollm2 import load_smollm2
    from trigrecon.testbed.trigger import parse_trigger

    built = sorted(p.parent for p in organisms_dir(TESTBED_DIR).glob("*/adapter/adapter_config.json"))
    if not built:
        pytest.skip("no testbed organism built yet: `trigrecon testbed build`")
    org = load_organism(built[0].parent)
    hm = load_smollm2(org.path / "adapter")
    trig = parse_trigger(org.spec.trigger)
    on = P.sample_split(trig, "chat", "triggered", 8, P.DEV_SEED + 1)
    off = P.sample_split(trig, "chat", "benign", 8, P.DEV_SEED + 1)
    assert action_rate(generate(hm, on, max_new_tokens=12), org.judge) >= 0.75
    assert action_rate(generate(hm, off, max_new_tokens=12), org.judge) == 0
