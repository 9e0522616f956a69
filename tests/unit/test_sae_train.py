"""Unit tests of trigrecon.organisms.sae_train: offline SAE training and autolabelling."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

from trigrecon.core.errors import ConfigError
from trigrecon.core.labels import load_labels, save_labels
from trigrecon.core.sae import check_compatible, sae_health
from trigrecon.organisms.sae_train import (
    SAETrainConfig,
    autolabel,
    category_purity,
    top_activations,
    train_sae,
)
from trigrecon.organisms.tiny import tiny_transformer

D = 64
WORDS = [
    "<pad>",
    "the",
    "a",
    "ate",
    "ripe",
    "mango",
    "apple",
    "kiwi",
    "car",
    "bus",
    "train",
    "dog",
    "cat",
    "rain",
    "i",
]
CATEGORY = {
    "mango": "fruit",
    "apple": "fruit",
    "kiwi": "fruit",
    "car": "vehicle",
    "bus": "vehicle",
    "train": "vehicle",
    "dog": "animal",
    "cat": "animal",
}


def tiny_model(d_vocab: int = 50, name: str = "tiny") -> HookedTransformer:
    return tiny_transformer(d_vocab, d_model=D, n_ctx=32, name=name)


def corpus(n: int, ctx: int = 32, vocab: int = 50, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, ctx), generator=torch.Generator().manual_seed(seed))


SMALL = dict(
    layer=0,
    d_sae=256,
    k=8,
    training_tokens=8192,
    batch_size_tokens=512,
    buffer_tokens=2048,
    store_batch_size_prompts=16,
)


@pytest.fixture(scope="module")
def trained() -> tuple[HookedTransformer, torch.Tensor, SAE]:
    model, toks = tiny_model(), corpus(128)
    return model, toks, train_sae(model, toks, SAETrainConfig(**SMALL))


# ---------------------------------------------------------------- training


def test_train_sae_metadata_and_health(trained):
    model, toks, sae = trained
    assert type(sae).__name__ == "TopKSAE"  # an inference SAE, not a TrainingSAE
    assert sae.cfg.d_in == D and sae.cfg.d_sae == 256
    meta = sae.cfg.metadata
    assert meta.hook_name == "blocks.0.hook_resid_post" and meta.model_name == "tiny"
    assert meta.neuronpedia_id == "tiny/0-res-256"
    assert not meta.model_from_pretrained_kwargs  # would make every load warn
    check_compatible(sae, model, layer=0)
    h = sae_health(sae, model, toks[:32])
    assert 0 < h.l0 <= 8 + 1e-6
    # Training must beat the same SAE with random unit decoder directions (tied encoder), which
    # explains ~0.21 here (trained: ~0.37 on this tiny corpus, ~0.33 on held-out text).
    rand = type(sae)(sae.cfg)
    rand.load_state_dict(sae.state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rand.W_dec.copy_(torch.nn.functional.normalize(torch.randn(rand.W_dec.shape, generator=g),
                                                       dim=-1))
        rand.W_enc.copy_(rand.W_dec.T)
    baseline = sae_health(rand, model, toks[:32]).fve
    held_out = sae_health(sae, model, corpus(32, seed=7)).fve
    assert 0.3 < h.fve < 1.0 and h.fve > baseline + 0.1, (h.fve, baseline)
    assert held_out > baseline + 0.05, (held_out, baseline)


def test_training_is_deterministic_under_seed(trained):
    model, toks, sae = trained
    again = train_sae(model, toks, SAETrainConfig(**SMALL))
    assert torch.equal(again.W_dec, sae.W_dec)


def test_train_config_is_validated():
    model, toks = tiny_model(), corpus(4)
    with pytest.raises(ConfigError, match="layer=5"):
        train_sae(model, toks, SAETrainConfig(layer=5))
    with pytest.raises(ConfigError, match="k=300"):
        train_sae(model, toks, SAETrainConfig(layer=0, d_sae=256, k=300))
    with pytest.raises(ConfigError, match="d_sae=512"):  # default d_sae = 8 * d_model
        train_sae(model, toks, SAETrainConfig(layer=0, k=600))
    with pytest.raises(ConfigError, match="lr=0"):
        train_sae(model, toks, SAETrainConfig(layer=0, lr=0))
    with pytest.raises(ConfigError, match="Int tensor"):
        train_sae(model, toks.float(), SAETrainConfig(layer=0))


@pytest.mark.parametrize("arch", ["jumprelu", "standard"])
def test_other_architectures_train(arch):
    model, toks = tiny_model(), corpus(32)
    cfg = SAETrainConfig(**(SMALL | dict(architecture=arch, training_tokens=2048)))
    sae = train_sae(model, toks, cfg)
    assert sae.cfg.architecture() == arch and sae.cfg.d_sae == 256


# ---------------------------------------------------------------- autolabel


def word_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def hand_built() -> tuple[HookedTransformer, SAE]:
    """Orthonormal embeddings; latent j's encoder direction is a weighted sum of the embeddings
    of its words, so it fires exactly on those tokens (strength = weight - 0.5)."""
    model = tiny_model(d_vocab=len(WORDS))
    emb = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0]
    latents = [
        {"mango": 3.0, "apple": 2.0, "kiwi": 1.5},  # 0: fruit
        {"car": 3.0, "bus": 2.5, "train": 2.0},  # 1: vehicle
        {"mango": 3.0, "car": 2.0, "the": 1.5, "dog": 1.2},  # 2: mixed
        {"mango": 9.0},  # 3: one word only
        {},
    ]  # 4: never fires
    sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=len(latents), apply_b_dec_to_input=False))
    with torch.no_grad():
        model.W_E.copy_(emb[: len(WORDS)])
        sae.W_enc.zero_()
        for j, weights in enumerate(latents):
            for w, a in weights.items():
                sae.W_enc[:, j] += a * emb[WORDS.index(w)]
        sae.b_enc.fill_(-0.5)
    sae.cfg.metadata.hook_name = "hook_embed"
    sae.cfg.metadata.neuronpedia_id = "hand/emb-5"
    return model, sae


def test_autolabel_lists_the_known_words(tmp_path):
    model, sae = hand_built()
    toks, tok = corpus(40, 16, vocab=len(WORDS)), word_tokenizer()
    top = top_activations(sae, model, toks, top_k=20)
    labels = autolabel(sae, model, toks, tokenizer=tok, word_category=CATEGORY, top=top)
    assert labels.get(0).startswith("fruit: mango, apple, kiwi (contexts: '... ")
    assert labels.get(1).startswith("vehicle: car, bus, train")
    assert labels.get(2).startswith("mango, car, the, dog")  # no category majority
    assert labels.get(3).startswith("fruit: mango (")
    assert labels.get(4) == ""  # never fires: no label
    assert (labels.model_id, labels.source) == ("hand", "emb-5")
    save_labels(tmp_path / "l.json", labels)
    assert load_labels(tmp_path / "l.json", sae).descriptions == labels.descriptions

    scores = category_purity(sae, model, toks, tokenizer=tok, word_category=CATEGORY, top=top)
    assert scores["fruit"] == (0, 1.0, 3)  # latent 3 is pure but spans one word only
    assert scores["vehicle"] == (1, 1.0, 3)
    assert scores["animal"].n_distinct_members < 3  # no animal latent here
    assert scores["fruit"].passes() and not scores["animal"].passes()


def test_top_activations_caps_repeats_of_one_word():
    model, sae = hand_built()
    toks = corpus(40, 16, vocab=len(WORDS))
    top = top_activations(sae, model, toks, top_k=20, max_per_word=2)
    ids = top.token_ids()
    assert (ids[3] == WORDS.index("mango")).sum() == 2 and (ids[3] >= 0).sum() == 2
    assert torch.allclose(top.values[0, :2], torch.tensor([2.5, 2.5])) and torch.all(
        top.values[4] == 0
    )
    assert torch.all(toks.reshape(-1)[top.flat[0, :6]] == torch.tensor([5, 5, 6, 6, 7, 7]))
