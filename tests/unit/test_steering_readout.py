"""Reading vectors: nearest latents, SAE encodings, steered generations."""

from __future__ import annotations

import torch

from trigrecon.core.hooks import assert_no_hooks
from trigrecon.organisms.tiny import tiny_sae
from trigrecon.steering.readout import (
    VectorReadout,
    add_behaviour,
    encoded_latents,
    nearest_latents,
    rank_latents,
    read_vector,
    steered_action_rate,
    steered_generations,
    vector_encoding,
)

PROMPTS = ["tell me a story about the cat", "what is a banana", "why is the sky blue"]


class Labels:
    def get(self, i: int) -> str:
        return f"L{i}"


def test_nearest_latent_of_a_decoder_row_is_itself(tiny_hooked):
    sae = tiny_sae(tiny_hooked, d_sae=64)
    hits = nearest_latents(3.0 * sae.W_dec[7], sae, Labels(), k=3)
    assert hits[0].latent == 7 and abs(hits[0].score - 1.0) < 1e-5 and hits[0].label == "L7"
    assert [h.latent for h in rank_latents(-torch.arange(5.0), 2, descending=False)] == [4, 3]


def test_encoding_in_context_removes_the_base(tiny_hooked):
    sae = tiny_sae(tiny_hooked, d_sae=64)
    base = torch.randn(10, tiny_hooked.d_model)
    zero = vector_encoding(torch.zeros(tiny_hooked.d_model), sae, base)
    assert torch.equal(zero, torch.zeros_like(zero))
    v = 5.0 * sae.W_dec[11]
    assert encoded_latents(v, sae, k=1)[0].latent == 11
    assert encoded_latents(v, sae, k=1, base=base)[0].latent == 11


def test_zero_vector_generations_equal_unsteered(tiny_hooked):
    plain = steered_generations(tiny_hooked, PROMPTS, 1, None, max_new_tokens=5)
    zero = steered_generations(tiny_hooked, PROMPTS, 1, torch.zeros(tiny_hooked.d_model), 5)
    assert zero == plain
    big = steered_generations(tiny_hooked, PROMPTS, 1, 50 * torch.randn(tiny_hooked.d_model), 5)
    assert big != plain
    rate, gens = steered_action_rate(tiny_hooked, PROMPTS, 1, None, lambda t: t == plain[0], 5)
    assert gens == plain and abs(rate - plain.count(plain[0]) / 3) < 1e-9
    assert_no_hooks(tiny_hooked)


def test_read_vector_fills_every_view(tiny_hooked):
    sae = tiny_sae(tiny_hooked, d_sae=64)
    code = torch.zeros(64)
    code[5] = 2.0
    r = read_vector(0, code @ sae.W_dec, 0.5, sae=sae, labels=Labels(), code=code, k=3)
    assert isinstance(r, VectorReadout) and r.code[0].latent == 5 and r.nearest[0].latent == 5
    add_behaviour(r, tiny_hooked, PROMPTS, 1, code @ sae.W_dec, lambda t: True, 3, n_keep=2)
    assert r.action_rate == 1.0 and len(r.generations) == 2


def test_nearest_words_of_a_word_direction(tiny_hooked):
    from trigrecon.steering.words import nearest_words, word_residuals

    words = ["cat", "dog", "banana", "apple", "snow", "river", "car", "book"]
    resid, found = word_residuals(tiny_hooked, words, PROMPTS[:2], layer=1)
    assert found.all() and resid.shape == (8, 2, tiny_hooked.d_model)
    centred = resid.mean(1) - resid.mean(1).mean(0)
    hits = nearest_words(centred[2], resid, found, words, k=3)
    assert hits[0].word == "banana" and abs(hits[0].score - 1.0) < 1e-5
