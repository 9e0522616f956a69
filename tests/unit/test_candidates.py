"""Open-vocabulary candidate words: label parsing, the word-start vocabulary, span readouts (the
cached-prefix fast path against a plain full-sequence reference), the token atlas and the pool.

The SmolLM2 tests need only its cached checkpoint (skipped with the command that builds it) and
stay short: the tokenizer, or a few dozen forward passes at a low layer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import PROMPTS, WORDS

from trigrecon.core.errors import ConfigError
from trigrecon.steering.candidates import (
    TOP_WORDS,
    WordPool,
    candidate_pool,
    content_words,
    label_words,
    token_atlas,
    word_start_marker,
    word_start_vocabulary,
)
from trigrecon.steering.words import default_insert, span_readout, word_residuals, word_span

ARIES = ("ies, zodiac, aurus (contexts: '...<|im_start|>user What do Ar[ies]'; '... mind when "
         "you think of Ar[ies]')")
SKI = "ski, skiing (contexts: '... a weekend around beano and[ ski]'; \"...I'm planning a " \
      "weekend around[ ski]\")"
TELL = ("tell, ent, y, telling, ination, prophet, cy, ier (contexts: '... me a fun fact about "
        "fore[tell]'; '... me a fun fact about fore[tell]')")
TOY = "tools: wrench, shovel, !, <assistant> (contexts: '... . [wrench]'; '... programs . [shovel]')"


@pytest.fixture(scope="module")
def smol(smollm2_dir: Any) -> Any:
    from trigrecon.core.model import load_model

    return load_model(smollm2_dir, n_ctx=256)


def reference_readout(hm: Any, words: list[str], contexts: list[str], layer: int,
                      insert: Any = default_insert) -> torch.Tensor:
    """The plain path: one full chat per (word, context), the whole sequence run, the residual
    averaged over the word's span."""
    out = torch.zeros(len(words), len(contexts), hm.d_model)
    for wi, w in enumerate(words):
        for ci, c in enumerate(contexts):
            batch = hm.batch([insert(c, [w])])
            span = word_span(hm.tokenizer, batch.tokens[0].tolist(), w)
            assert span is not None, (w, c)
            with torch.no_grad():
                resid = hm.model(batch.tokens, stop_at_layer=layer + 1)[0]
            out[wi, ci] = resid[span[0]:span[1]].mean(0)
    return out


# --- words of text ----------------------------------------------------------------------------

def test_auto_labels_give_whole_words_then_the_listed_tokens():
    assert label_words(ARIES) == ["Aries", "ies", "zodiac", "aurus"]
    assert label_words(SKI) == ["ski", "skiing"]  # '[ ski]': a leading space starts the word
    assert label_words(TELL) == ["foretell", "tell", "ent", "telling", "ination", "prophet",
                                 "ier"]  # 'y', 'cy': fewer than 3 letters
    assert label_words(TOY) == ["wrench", "shovel", "tools"]  # 'category: token' -> both


def test_free_text_labels_give_their_content_words():
    assert label_words("references to fruits and berries") == ["fruits", "berries"]
    assert label_words("Mentions of the zodiac sign Aries") == ["zodiac", "sign", "aries"]
    assert label_words("") == [] and label_words(None) == []


def test_content_words_moved_here_and_natural_still_exports_them():
    from trigrecon.selfaware import natural

    assert natural.content_words is content_words
    assert "the" in natural.STOP_WORDS
    assert content_words("Can you explain the history of Rome to me?") == ["history", "rome"]


# --- the model's words --------------------------------------------------------------------------

def test_word_start_vocabulary_of_a_word_level_tokenizer(tiny_hooked):
    tok = tiny_hooked.tokenizer
    assert word_start_marker(tok) is None
    vocab = word_start_vocabulary(tok)
    assert vocab == [w for w in dict.fromkeys(WORDS) if len(w) >= 2]  # id order, 2+ letters
    assert "a" not in vocab and "an" in vocab


def test_word_start_vocabulary_of_smollm2_needs_the_word_start_marker(smol_tokenizer):
    vocab = word_start_vocabulary(smol_tokenizer)
    words = set(vocab)
    assert word_start_marker(smol_tokenizer) == "Ġ" and 20000 < len(vocab) < 30000
    assert {"strawberry", "zodiac", "straw"} <= words  # word starts, fragments like Ġstraw too
    assert "ugging" not in words and "oths" not in words  # mid-word pieces ('ĠH|ugging') never
    assert all(len(w) >= 3 and w.isalpha() for w in vocab)
    assert "the" in words and "The" not in words  # case-insensitive, lower case preferred
    assert "Paris" in words and "paris" not in words  # a capitalised word without lower form
    assert len({w.lower() for w in vocab}) == len(vocab)


# --- span readouts ------------------------------------------------------------------------------

@pytest.mark.parametrize("lean", [True, False], ids=["lean", "transformer_lens"])
def test_fast_readout_equals_the_full_sequence_reference_on_a_tiny_model(tiny_hooked, lean):
    words = ["banana", "red apple", "snow", "cat"]  # 'red apple': a two-token span
    contexts = PROMPTS[:3]
    ref = reference_readout(tiny_hooked, words, contexts, 1)
    fast, found = span_readout(tiny_hooked, words, contexts, 1, batch_size=3, lean=lean)
    plain, _ = span_readout(tiny_hooked, words, contexts, 1, fast=False, lean=lean)
    assert found.all()
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(plain, ref, atol=1e-4, rtol=0)


def test_fast_readout_groups_words_by_the_text_before_them(tiny_hooked):
    """An insertion whose place depends on the word: each group gets its own prefix, and every
    reading still equals the plain path."""
    def insert(prompt: str, ws: Any) -> str:
        w = " ".join(ws)
        return f"{w} {prompt}" if len(w) % 2 else f"{prompt} it is about {w} ."

    words = ["banana", "cat", "river", "snow", "apple"]
    fast, found = span_readout(tiny_hooked, words, PROMPTS[:2], 2, insert=insert)
    assert found.all()
    torch.testing.assert_close(fast, reference_readout(tiny_hooked, words, PROMPTS[:2], 2, insert),
                               atol=1e-4, rtol=0)


def test_a_word_missing_from_its_text_is_reported_not_read(tiny_hooked):
    resid, found = word_residuals(tiny_hooked, ["cat"], PROMPTS[:1], 1,
                                  insert=lambda p, ws: p.replace("cat", "dog"))
    assert not found.any() and (resid == 0).all()
    with pytest.raises(ConfigError, match="needs words and contexts"):
        span_readout(tiny_hooked, [], PROMPTS[:1], 1)


def test_a_multi_token_word_is_read_over_all_its_tokens_on_smollm2(smol):
    contexts = ["What is the capital of France?", "Write a haiku about rain."]
    words = ["soothsayer", "cross-country skiing", "Aries", "strawberry"]
    batch = smol.batch([default_insert(contexts[0], ["soothsayer"])])
    tokens = batch.tokens[0].tolist()
    s, e = word_span(smol.tokenizer, tokens, "soothsayer")
    assert e - s == 3 and smol.tokenizer.decode(tokens[s:e]) == " soothsayer"
    assert smol.tokenizer.decode(tokens[e:e + 1]) == " ."  # the span stops at the word
    layer = 3
    ref = reference_readout(smol, words, contexts, layer)
    fast, found = span_readout(smol, words, contexts, layer)
    assert found.all()
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=0)
    tl, _ = span_readout(smol, words, contexts, layer, lean=False)
    torch.testing.assert_close(tl, ref, atol=1e-4, rtol=0)
    with torch.no_grad():  # the span mean is not the last token's residual
        last = smol.model(batch.tokens[:, :e], stop_at_layer=layer + 1)[0, -1]
    assert (fast[0, 0] - last).norm() > 0.1 * last.norm()
    # the max over the span's tokens is not the last token's value either
    mx, _ = span_readout(smol, words[:1], contexts[:1], layer, reduce="max")
    assert (mx[0, 0] - last).abs().max() > 1e-2 and (mx[0, 0] >= last - 1e-4).all()


# --- the atlas ----------------------------------------------------------------------------------

def test_atlas_nearest_finds_the_word_whose_residual_is_the_direction(tiny_hooked):
    atlas = token_atlas(tiny_hooked, 1, PROMPTS[:2])
    assert atlas.words == word_start_vocabulary(tiny_hooked.tokenizer) and atlas.found.all()
    mean = atlas.resid.mean(1)
    i = atlas.words.index("banana")
    hits = atlas.nearest(mean[i] - mean.mean(0), k=3)
    assert hits[0].word == "banana" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].score < 0.99
    assert atlas.nearest(mean[i] - mean.mean(0), k=2, exclude=["Banana"])[0].word != "banana"
    with pytest.raises(ConfigError, match="d_model"):
        atlas.nearest(torch.ones(3))


def test_atlas_is_cached_per_model_weights_and_contexts(tiny_hooked):
    a = token_atlas(tiny_hooked, 1, PROMPTS[:2])
    assert token_atlas(tiny_hooked, 1, PROMPTS[:2]) is a
    assert token_atlas(tiny_hooked, 1, PROMPTS[1:3]) is not a
    with torch.no_grad():
        tiny_hooked.model.W_E.add_(0.0)  # an in-place update, values unchanged
    assert token_atlas(tiny_hooked, 1, PROMPTS[:2]) is not a


def test_atlas_latent_words_read_the_sae_without_forward_passes(tiny_hooked, planted,
                                                                monkeypatch):
    import trigrecon.steering.candidates as C
    from trigrecon.methods.verify import word_activations

    monkeypatch.setattr(C, "ENCODE_CHUNK", 16)  # several chunks: the running top list merges
    atlas = token_atlas(tiny_hooked, 1, PROMPTS[:2])
    calls: list[int] = []
    handle = tiny_hooked.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        tops = atlas.latent_words(planted, [0, 3], k=4)
    finally:
        handle.remove()
    assert tops[0][0].word == "banana" and not calls
    acts = atlas.activations(planted, [0, 3])
    for j, lat in enumerate([0, 3]):  # the one-pass top table == the direct readout's top words
        vals, top = acts[:, j].topk(4)
        want = [atlas.words[i] for i, v in zip(top.tolist(), vals, strict=True) if v > 0]
        assert [h.word for h in tops[lat]] == want
    wide = atlas.latent_words(planted, [3], k=TOP_WORDS + 1)[3]  # beyond the table: direct
    assert [h.word for h in wide[:4]] == [h.word for h in tops[3]]
    words = atlas.words[:20] + ["banana"]
    direct = word_activations(tiny_hooked, planted, words, PROMPTS[:2], [0, 3], 1)
    idx = [atlas.words.index(w) for w in words]
    torch.testing.assert_close(atlas.activations(planted, [0, 3])[idx], direct, atol=1e-4, rtol=0)


# --- the pool -----------------------------------------------------------------------------------

def test_a_vocabulary_under_the_cap_is_the_pool_whole(tiny_hooked, planted):
    vocab = word_start_vocabulary(tiny_hooked.tokenizer)
    pool = candidate_pool(tiny_hooked, 1, PROMPTS[:2], cap=len(vocab) + 2, sae=planted,
                          latents=[0], labels={0: TOY}, prompts=["tell me about the moon"],
                          user_words=["red apple", "zyzzyva", "  fish  "])
    assert isinstance(pool, WordPool) and pool.exhaustive
    assert pool.words[: len(vocab)] == vocab  # the vocabulary first, in its order
    assert pool.words[len(vocab):] == ["red apple"]  # readable extras; 'zyzzyva' is <unk>
    assert pool.sources["fish"] == ["vocabulary", "user"]
    assert pool.sources["moon"] == ["vocabulary", "prompts"]
    assert pool.counts()["vocabulary"] == len(vocab) and pool.dropped == 0
    full = candidate_pool(tiny_hooked, 1, PROMPTS[:2], cap=len(vocab))
    assert full.words == vocab and full.exhaustive


def test_a_capped_pool_merges_the_sources_in_priority_order(tiny_hooked, planted):
    labels = {0: "mentions of snow and the mountain", 3: ARIES}  # ARIES: unknown to this model
    direction = torch.randn(tiny_hooked.d_model)
    pool = candidate_pool(tiny_hooked, 1, PROMPTS[:2], cap=12, sae=planted, latents=[0, 3],
                          labels=labels, directions={"vec": direction},
                          prompts=["tell me about the moon"], user_words=["red apple"],
                          per_latent=3, per_direction=3)
    assert not pool.exhaustive and len(pool) <= 12 and pool.vocabulary_size > 12
    assert pool.words[:3] == ["red apple", "snow", "mountain"]  # user, then latent 0's label
    assert pool.sources["banana"] == ["atlas:0"]  # the planted latent's top atlas word
    assert pool.words.index("banana") < pool.words.index(next(
        w for w, s in pool.sources.items() if "atlas:3" in s))  # latent by latent, in rank order
    assert any(s.startswith("direction:vec") for ss in pool.sources.values() for s in ss)
    assert "moon" in pool.words and pool.sources["moon"] == ["prompts"]
    assert pool.proposed() >= {"banana", "snow"} and "moon" not in pool.proposed()
    small = candidate_pool(tiny_hooked, 1, PROMPTS[:2], cap=2, sae=planted, latents=[0],
                           labels=labels, user_words=["red apple"])
    assert small.words == ["red apple", "snow"] and small.dropped > 0
    with pytest.raises(ConfigError, match="cap"):
        candidate_pool(tiny_hooked, 1, PROMPTS[:2], cap=-1)
