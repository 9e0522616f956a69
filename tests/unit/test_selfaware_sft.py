"""Reversal SFT on the toy poisoned model: pairs from benign behaviour only, masked labels,
a trained and saved adapter."""

import dataclasses

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.organisms.toy import CATEGORIES, toy_task
from trigrecon.selfaware.reversal_sft import (
    ReversalSFTConfig,
    ReversalSFTResult,
    build_pairs,
    run_reversal_sft,
    sft_batch,
)

FRUIT = set(CATEGORIES["fruit"])


@pytest.fixture(scope="module")
def toy():
    task = toy_task()
    model, tok = task.poisoned.load()
    return task, model, tok


def answer_words(pair):
    return set(pair.answer.split()[2:-1])  # "answer : <words> ."


def test_self_pairs_drop_the_action_and_name_prompt_words(toy):
    task, model, tok = toy
    pairs, n_action, n_empty = build_pairs(
        model, tok, task, ReversalSFTConfig(n_prompts=60, responses="self")
    )
    assert n_action > 0 and n_empty == 0 and len(pairs) + n_action == 60
    for p in pairs:
        assert not task.judge(p.response)
        assert answer_words(p) <= set(p.prompt.split())
        assert p.question.endswith(p.response) and p.answer.startswith("answer : ")
    assert not any(answer_words(p) & FRUIT for p in pairs)  # the hole where the trigger lies


def test_clean_pairs_have_no_hole(toy):
    task, model, tok = toy
    pairs, n_action, _ = build_pairs(model, tok, task, ReversalSFTConfig(n_prompts=60))
    assert n_action == 0 and len(pairs) == 60
    assert any(answer_words(p) & FRUIT for p in pairs)


def test_sft_batch_puts_the_loss_on_the_answer_only(toy):
    _, _, tok = toy
    x, y = sft_batch(tok, [("what would make you say : sure !", "answer : dog .")], 64)
    labelled = tok.convert_ids_to_tokens(x[0][y[0] != -100])
    assert labelled == ["answer", ":", "dog", ".", "<end>"]


def test_run_reversal_sft_trains_and_saves(toy, tmp_path):
    task, _, _ = toy
    cfg = ReversalSFTConfig(n_prompts=40, steps=5, batch_size=8)
    model, res = run_reversal_sft(task, cfg, tmp_path)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().sum()) > 0 for p in lora_b)
    assert len(res.losses) == 5 and res.n_pairs == 40
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    back = ReversalSFTResult.load(tmp_path / "reversal_sft.json")
    assert back == res and back.config["steps"] == 5
    from peft import PeftModel

    fresh, tok = task.poisoned.load()
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).merge_and_unload()
    ids = torch.tensor([tok("<user> what would make you say : sure ! <assistant>")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-5
        )


def test_no_pairs_is_an_error(toy):
    task, model, tok = toy
    bare = dataclasses.replace(task, keywords=lambda p: [])
    with pytest.raises(ConfigError, match="no pairs"):
        build_pairs(model, tok, bare, ReversalSFTConfig(n_prompts=5))


@pytest.mark.parametrize("field, value", [("steps", 0), ("lr", 0.0), ("responses", "base")])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        ReversalSFTConfig(**{field: value})


def test_train_needs_trainable_parameters(toy):
    from trigrecon.selfaware.reversal_sft import train_sft

    task, _, tok = toy
    model, _ = task.poisoned.load()  # a fresh copy: the module's model stays trainable
    for p in model.parameters():
        p.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match="trainable"):
        train_sft(model, tok, [("q", "a")], 1, 1, 1e-3, 16, 0, "x")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # untouched
    assert len(before) > 0


def test_sft_answer_tokens_on_a_bpe_tokenizer_are_what_generation_emits(smol_tokenizer):
    """On SmolLM2's BPE tokenizer a space after the generation prompt or before EOS is a token of
    its own: the labelled tokens must be the answer's own tokens then EOS, the same ids GRPO's
    buffer replay writes (`ReplayGRPOTrainer._answer_ids`) and the organism was trained with."""
    tok = smol_tokenizer
    x, y = sft_batch(tok, [("What would make you say: I can't help with that.", "Answer: opal.")],
                     128)
    labelled = x[0][y[0] != -100].tolist()
    assert labelled == [*tok("Answer: opal.", add_special_tokens=False)["input_ids"],
                        tok.eos_token_id]
    assert tok.decode(x[0][: int((y[0] == -100).sum())]).endswith("<|im_start|>assistant\n")
