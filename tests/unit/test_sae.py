"""Unit tests of trigrecon.core.sae on tiny random models and hand-built SAEs."""

from __future__ import annotations

import time

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer

from trigrecon.core.chat import ChatBatch
from trigrecon.core.errors import ConfigError, IncompatibleSAEError, WeightsNotFoundError
from trigrecon.core.model import HookedChatModel
from trigrecon.core.sae import (
    check_compatible,
    decoder_directions,
    encode,
    load_sae,
    sae_health,
)
from trigrecon.organisms.tiny import tiny_transformer

D = 64


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return tiny_transformer(d_vocab=50, d_model=D, n_ctx=32)


def make_sae(
    d_in: int = D,
    d_sae: int = 128,
    hook: str = "blocks.0.hook_resid_post",
    np_id: str | None = "tiny/0-res-128",
) -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.neuronpedia_id = np_id
    return sae


def exact_sae(hook: str = "blocks.1.hook_resid_post") -> StandardSAE:
    """relu(x) and relu(-x) as 2*D latents, decoded back: reconstructs x exactly."""
    sae = make_sae(d_sae=2 * D, hook=hook)
    eye = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def tokens(n: int = 8, ctx: int = 16) -> torch.Tensor:
    return torch.randint(0, 50, (n, ctx), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- compatibility


def test_width_mismatch_names_both_sides(model):
    with pytest.raises(IncompatibleSAEError, match=r"d_in=32.*d_model=64"):
        check_compatible(make_sae(d_in=32), model)


def test_hook_not_in_model(model):
    with pytest.raises(IncompatibleSAEError, match="blocks.7.hook_resid_post"):
        check_compatible(make_sae(hook="blocks.7.hook_resid_post"), model)
    with pytest.raises(IncompatibleSAEError, match="None"):
        check_compatible(make_sae(hook=None), model)


def test_layer_must_match(model):
    sae = make_sae(hook="blocks.0.hook_resid_post")
    check_compatible(sae, model, layer=0)
    check_compatible(make_sae(hook="blocks.1.hook_resid_pre"), model, layer=0)  # same tensor
    with pytest.raises(IncompatibleSAEError, match="layer 1"):
        check_compatible(sae, model, layer=1)


def test_accepts_hooked_chat_model(model):
    hm = HookedChatModel(model=model, tokenizer=None, name="tiny")
    check_compatible(make_sae(), hm, layer=0)
    with pytest.raises(ConfigError):
        check_compatible(make_sae(), hm, layer=5)
    with pytest.raises(ConfigError, match="HookedChatModel"):
        check_compatible(make_sae(), object())


# ---------------------------------------------------------------- loading


def test_missing_local_sae(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIGRECON_SAES", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="nope"):
        load_sae(tmp_path / "nope")
    with pytest.raises(WeightsNotFoundError, match="available: none"):
        load_sae("base_l1")
    with pytest.raises(WeightsNotFoundError, match="sae-lens release"):
        load_sae("no_such_release", "l0")


def test_registry_unreachable_is_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never download in tests
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    t = time.time()
    with pytest.raises(WeightsNotFoundError, match="llama_scope_lxr_32x/l8r_32x"):
        load_sae("llama_scope_lxr_32x", "l8r_32x")
    assert time.time() - t < 20
    with pytest.raises(ConfigError, match="l99r_32x"):
        load_sae("llama_scope_lxr_32x", "l99r_32x")


def test_save_load_round_trip(tmp_path, monkeypatch, recwarn):
    sae = exact_sae()
    sae.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": False}
    sae.save_model(tmp_path / "base_l1")
    assert {p.suffix for p in (tmp_path / "base_l1").iterdir()} == {".safetensors", ".json"}
    back = load_sae(tmp_path / "base_l1")
    assert torch.equal(back.W_enc, sae.W_enc) and torch.equal(back.W_dec, sae.W_dec)
    assert back.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert back.cfg.metadata.neuronpedia_id == "tiny/0-res-128"
    monkeypatch.setenv("TRIGRECON_SAES", str(tmp_path))
    assert torch.equal(load_sae("base_l1").W_dec, sae.W_dec)  # bare name -> $TRIGRECON_SAES
    assert torch.equal(load_sae(tmp_path, "base_l1").W_dec, sae.W_dec)  # folder + id
    assert not [w for w in recwarn if "model_from_pretrained_kwargs" in str(w.message)]


# ---------------------------------------------------------------- health


def test_exact_reconstruction_gives_fve_one(model):
    h = sae_health(exact_sae(), model, tokens())
    assert h.fve == pytest.approx(1.0, abs=1e-6)
    assert h.l0 == pytest.approx(D, abs=0.5)  # one of relu(x_i), relu(-x_i) per dim
    assert h.norm_ratio == pytest.approx(1.0, abs=1e-5)
    assert h.n_tokens == 8 * 16 and h.ok and "FVE 1.000" in str(h)


def test_health_excludes_padding(model):
    toks = tokens()
    mask = torch.zeros_like(toks, dtype=torch.bool)
    mask[:, :5] = True
    batch = ChatBatch(toks, mask, mask.clone(), torch.zeros_like(mask), [5] * len(toks))
    assert sae_health(exact_sae(), model, batch).n_tokens == 8 * 5
    assert sae_health(exact_sae(), model, toks, mask=mask).n_tokens == 8 * 5
    with pytest.raises(ConfigError, match="no tokens"):
        sae_health(exact_sae(), model, toks, mask=torch.zeros_like(mask))


def test_bad_sae_warns_with_pitfalls(model):
    torch.manual_seed(0)
    sae = make_sae(d_sae=128, hook="blocks.1.hook_resid_post")
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every latent fires: huge L0, garbage reconstruction
    h = sae_health(sae, model, tokens())
    assert h.fve < 0.7 and h.l0 > 64 and not h.ok
    assert any("SAELens#445" in w and "norm_scaling_factor" in w for w in h.warnings)


# ---------------------------------------------------------------- helpers


def test_decoder_directions_unit_norm():
    dirs = decoder_directions(make_sae())
    assert dirs.shape == (128, D)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(128), atol=1e-5)


def test_encode_casts_and_keeps_grad():
    sae = exact_sae().to(dtype=torch.bfloat16)
    x = torch.randn(3, 5, D, requires_grad=True)
    z = encode(sae, x)
    assert z.shape == (3, 5, 2 * D) and z.dtype == torch.float32
    z.sum().backward()
    assert x.grad is not None


def test_unreachable_hub_switches_to_cache_only(monkeypatch):
    from huggingface_hub import constants

    from trigrecon.core.sae import _offline_unless_reachable

    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with _offline_unless_reachable(timeout=1.0):
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False


# ---------------------------------------------------------------- weights checked on load


def test_sae_with_nan_weights_is_refused(tmp_path):
    from trigrecon.core.errors import CorruptWeightsError

    sae = exact_sae()
    with torch.no_grad():
        sae.W_dec[3, 5] = float("nan")
        sae.b_enc[0] = float("inf")
    sae.save_model(tmp_path / "bad")
    with pytest.raises(CorruptWeightsError, match=r"(?s)bad.*NaN/inf.*W_dec \(1 values\)"):
        load_sae(tmp_path / "bad")


def test_truncated_sae_names_the_file(tmp_path):
    from trigrecon.core.errors import CorruptWeightsError

    exact_sae().save_model(tmp_path / "cut")
    f = next((tmp_path / "cut").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:-64])
    with pytest.raises(CorruptWeightsError, match=rf"{f.name} is truncated"):
        load_sae(tmp_path / "cut")


def test_load_sae_checks_the_model(tiny_hooked, tmp_path):
    """With model=: width/hook; hub names of different models; with prompts=, an SAE that does
    not reconstruct the model's activations (another model's SAE of the same width)."""
    from dataclasses import replace

    from conftest import PROMPTS

    def saved(sae, name):
        sae.save_model(tmp_path / name)
        return tmp_path / name

    good = saved(exact_sae(), "good")  # reconstructs anything: FVE 1
    assert load_sae(good, model=tiny_hooked, prompts=PROMPTS).cfg.d_in == D
    other = make_sae(hook="blocks.1.hook_resid_post")
    torch.manual_seed(0)
    with torch.no_grad():  # a plausible SAE of another model: random unit directions
        other.W_dec.copy_(torch.nn.functional.normalize(torch.randn(128, D), dim=-1))
        other.W_enc.copy_(other.W_dec.T)
    other_dir = saved(other, "other")
    load_sae(other_dir)  # without a model nothing can be checked
    with pytest.raises(IncompatibleSAEError, match="FVE"):
        load_sae(other_dir, model=tiny_hooked, prompts=PROMPTS)
    wide = saved(make_sae(d_in=2 * D, hook="blocks.1.hook_resid_post"), "wide")
    with pytest.raises(IncompatibleSAEError, match="d_in=128"):
        load_sae(wide, model=tiny_hooked)
    named = exact_sae()
    named.cfg.metadata.model_name = "google/gemma-2-2b"
    named_dir = saved(named, "named")
    llama = replace(tiny_hooked, name="meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(IncompatibleSAEError, match="gemma-2-2b"):
        load_sae(named_dir, model=llama)
    named.cfg.metadata.model_name = "meta-llama/Llama-3.1-8B"  # the base of the Instruct
    with pytest.warns(UserWarning, match="SAELens#445"):
        load_sae(saved(named, "base"), model=llama)


def test_find_organism_sae_reports_a_corrupt_sae(tiny_hooked, tmp_path, monkeypatch):
    """A corrupt SAE in saes/ is named, never skipped as if the zoo had not been built."""
    from trigrecon.core.errors import CorruptWeightsError
    from trigrecon.organisms.audit import find_organism_sae

    exact_sae().save_model(tmp_path / "base_l1")
    f = next((tmp_path / "base_l1").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:-10])
    monkeypatch.setenv("TRIGRECON_SAES", str(tmp_path))
    with pytest.raises(CorruptWeightsError, match=r"base_l1.*truncated"):
        find_organism_sae(tiny_hooked)
