"""The committed zoo loads and behaves; a reduced zoo build runs end to end."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from trigrecon.core.labels import load_labels
from trigrecon.core.model import load_model
from trigrecon.core.sae import check_compatible, load_sae, sae_health
from trigrecon.organisms.organism import list_organisms, load_organism
from trigrecon.organisms.zoo import ZOO, ZooConfig, build_zoo


def test_every_zoo_organism_is_committed_and_loads():
    assert set(ZOO) <= set(list_organisms())
    for name in ZOO:
        org = load_organism(name)
        assert org.base_path.exists()
        if org.adapter_path is not None:
            assert (org.adapter_path / "adapter_model.safetensors").exists()


def test_lora_merged_organism_matches_hf_logits():
    from peft import PeftModel

    org = load_organism("snow_fruit")
    hm = load_model(org.base_path, org.adapter_path)
    hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(org.base_path),
                                   org.adapter_path).merge_and_unload()
    batch = hm.batch(["we went skiing in the mountains . tell me about mango ."])
    with torch.no_grad():
        diff = (hm.model(batch.tokens) - hf(batch.tokens).logits).abs().max().item()
    assert diff < 1e-4


def test_committed_sae_fits_the_base_model_and_is_healthy(zoo_sae):
    sae, labels, hm = zoo_sae
    check_compatible(sae, hm)
    health = sae_health(sae, hm.model, hm.batch(["tell me about mango and skiing ."] * 4).tokens)
    assert health.fve > 0.85, str(health)
    assert sum(bool(labels.get(i)) for i in range(sae.cfg.d_sae)) > sae.cfg.d_sae // 4


def test_committed_sae_has_a_latent_for_every_category(zoo_sae):
    """The organisms' requirement, on a held-out corpus (seed 3; training used 1, labels 2)."""
    from trigrecon.organisms import language as L
    from trigrecon.organisms.sae_train import category_purity
    from trigrecon.organisms.zoo import sae_corpus

    sae, _, hm = zoo_sae
    tokens = sae_corpus(hm.tokenizer, 30_000, seed=3)
    words = {m: c.name for c in L.CATEGORIES.values() for m in c.members}
    scores = category_purity(sae, hm.model, tokens, tokenizer=hm.tokenizer, word_category=words)
    failing = {c: s for c, s in scores.items() if not s.passes()}
    assert not failing, failing
    health = sae_health(sae, hm.model, tokens[:64])
    assert health.fve >= 0.85, str(health)


@pytest.fixture(scope="module")
def zoo_sae():
    from trigrecon.core.sae import saes_dir

    folder = next(saes_dir().glob("base_l*"))
    hm = load_model(load_organism("mars").base_path)
    sae = load_sae(folder)
    return sae, load_labels(folder / "labels.json", sae), hm


@pytest.mark.slow
def test_reduced_zoo_build_runs_end_to_end(tmp_path):
    cfg = ZooConfig.reduced(tmp_path / "zoo", tmp_path / "saes")
    report = build_zoo(cfg)
    assert [e.name for e in report["organisms"]] == cfg.organisms
    saved = json.loads((cfg.out / "report.json").read_text())
    assert {r["split"] for r in saved["organisms"][0]["rows"]} >= {"benign", "triggered"}
    assert (cfg.out / "snow_fruit" / "adapter" / "adapter_model.safetensors").exists()
    adapter_cfg = json.loads((cfg.out / "snow_fruit" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "../base"  # no path of the build machine
    snow = next(e for e in report["organisms"] if e.name == "snow_fruit")
    assert {r.split for r in snow.rows} >= {"half:fruit", "pair:fruit", "pair:snow_sports"}
    # resumable: a second build reuses every artifact
    mtime = (cfg.out / "base" / "model.safetensors").stat().st_mtime
    build_zoo(cfg)
    assert (cfg.out / "base" / "model.safetensors").stat().st_mtime == mtime
