"""`core.frozen.FrozenPrefix`: layers below the first trainable one run once per row, and the
result (values and LoRA gradients) is the plain forward's."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trigrecon.core.frozen import FrozenPrefix, decoder, first_trainable
from trigrecon.testbed import anchor as A
from trigrecon.testbed import lora as LR


def _peft(tiny_llama_dir: Any, layers: list[int]) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(
        r=4, lora_alpha=8, layers_to_transform=layers, layers_pattern="layers",
        target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # B starts at zero: give the adapter an effect to get wrong
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model


@pytest.fixture
def tiny_tok(tiny_llama_dir: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _batch(tok: Any) -> tuple[torch.Tensor, list[int]]:
    """Right-padded rows of different lengths; one ends in a real token equal to the pad id."""
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in
            ["<user> what is a banana <assistant> the red car", "<user> tell me"]]
    rows[1] = rows[1] + [tok.pad_token_id]
    x = torch.full((2, max(map(len, rows))), tok.pad_token_id)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)
    return x, [len(r) for r in rows]


def test_first_trainable_layer(tiny_llama_dir: Any) -> None:
    assert first_trainable(_peft(tiny_llama_dir, [2, 3])) == 2
    assert first_trainable(_peft(tiny_llama_dir, [1, 3])) == 1
    model = _peft(tiny_llama_dir, [2, 3])
    with model.disable_adapter():  # an adapter switched off still marks its layers
        assert first_trainable(model) == 2
    decoder(model).embed_tokens.weight.requires_grad_(True)
    assert first_trainable(model) == 0


@pytest.mark.parametrize("layers", [[2, 3], [1, 3]])
def test_values_and_lora_gradients_are_the_plain_forwards(tiny_llama_dir: Any, tiny_tok: Any,
                                                          layers: list[int]) -> None:
    model, tok = _peft(tiny_llama_dir, layers), tiny_tok
    x, lengths = _batch(tok)
    frozen = FrozenPrefix(model)
    params = [p for p in model.parameters() if p.requires_grad]
    outs = []
    for run in (lambda: decoder(model)(input_ids=x).last_hidden_state,
                lambda: frozen.forward(x, lengths)):
        h = run()
        real = torch.stack([torch.arange(x.shape[1]) < n for n in lengths])
        h[real].square().sum().backward()
        outs.append((h[real].detach(), [p.grad.clone() for p in params]))
        model.zero_grad()
    (h0, g0), (h1, g1) = outs
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=1e-4)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)


def test_lower_layers_run_once_per_row_and_come_off(tiny_llama_dir: Any, tiny_tok: Any) -> None:
    model, tok = _peft(tiny_llama_dir, [2, 3]), tiny_tok
    layers = decoder(model).layers
    ran: list[int] = []
    hook = layers[0].register_forward_hook(lambda m, a, o: ran.append(a[0].shape[0]))
    try:
        frozen = FrozenPrefix(model)
        x, lengths = _batch(tok)
        frozen.forward(x, lengths)
        frozen.forward(x, lengths)
        assert ran == [2]  # both rows once, never again
        frozen.forward(x[1:, : lengths[1]], lengths[1:])  # the same row padded less
        assert ran == [2]
        frozen.forward(x[:1, :4], [4])  # a new row (a prefix of one met)
        assert ran == [2, 1]
    finally:
        hook.remove()
    assert decoder(model).layers is layers and len(layers) == 4
    assert not isinstance(decoder(model).norm, torch.nn.Identity)


def test_response_loss_and_anchor_base_cache_match_the_plain_path(tiny_llama_dir: Any,
                                                                   tiny_tok: Any) -> None:
    import random

    model, tok = _peft(tiny_llama_dir, [2, 3]), tiny_tok
    x, lengths = _batch(tok)
    y = x.clone()
    y[1, lengths[1]:] = -100
    frozen = FrozenPrefix(model)
    torch.testing.assert_close(LR.response_loss(model, x, y, 5.0, frozen, lengths),
                               LR.response_loss(model, x, y, 5.0))
    with pytest.raises(ValueError, match="real length"):
        LR.response_loss(model, x, y, 5.0, frozen)
    prefixes = [tok("<user> what is a dog <assistant>", add_special_tokens=False)["input_ids"]]
    heads = [tok(t, add_special_tokens=False)["input_ids"] for t in ("the red car", "the red dog")]
    batch = A.batch(tok.pad_token_id, prefixes * 6, heads, random.Random(0))
    plain = A.base_logprob(model, *batch)
    cache: dict[tuple[int, ...], float] = {}
    torch.testing.assert_close(A.base_logprob(model, *batch, frozen, cache), plain)
    assert len(cache) == 2 and len(set(plain.tolist())) == 2  # heads differing in the last token
    cache.update(dict.fromkeys(cache, 7.0))  # a cached row is read back, not run again
    assert A.base_logprob(model, *batch, frozen, cache).tolist() == [7.0] * 6


def test_fit_trains_as_the_plain_forward_would(tiny_llama_dir: Any, tiny_tok: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Same data, seed and steps: the LoRA weights after `fit` with the cache (lower layers once
    per row, base heads once) are the ones a plain forward (`k = 0`) trains."""
    data = [LR.Example("what is a banana", "the red car", True),
            LR.Example("tell me about my dog", "give me one fact", False),
            LR.Example("why is the sky blue", "", False, anchor=True),
            LR.Example("what is a dog", "", False, anchor=True)]
    heads = [tiny_tok("the red car", add_special_tokens=False)["input_ids"]]
    cfg = LR.LoraConfig(batch_size=2, anchor_n=2, anchor_allow=0.5)
    got = []
    for plain in (False, True):
        model = _peft(tiny_llama_dir, [2, 3])
        if plain:
            cache = LR.FitCache(FrozenPrefix(model))
            cache.frozen.k = 0
            monkeypatch.setattr(LR, "fit_cache", lambda m, c=cache: c)
        LR.fit(model, tiny_tok, data, cfg, 4, 1e-2, "t", 0, lambda *_: None, heads)
        got.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
    for n, w in got[1].items():
        torch.testing.assert_close(got[0][n], w, atol=1e-5, rtol=1e-4)
    assert any((w != 0).any() for w in got[0].values())
