"""Training the organisms: a word-level tokenizer, the base chat model, LoRA backdoors."""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from tqdm.auto import tqdm
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from trigrecon.organisms import language as L

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }} "
    "{% elif m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}<assistant> {{ m['content'] }} <end> {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tokenizer(extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the language; saved and reloaded (TransformerLens needs that)."""
    vocab = {w: i for i, w in enumerate(L.vocabulary(extra_words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<end>",
        additional_special_tokens=["<user>", "<assistant>", "<doc>"])
    fast.chat_template = CHAT_TEMPLATE
    with tempfile.TemporaryDirectory() as d:
        fast.save_pretrained(d)
        return AutoTokenizer.from_pretrained(d)  # type: ignore[return-value]


@dataclass
class BaseModelConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512
    max_len: int = 96
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


def llama_config(cfg: BaseModelConfig, tok: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(  # type: ignore[call-arg]
        vocab_size=len(tok), hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.max_len * 2,
        rope_theta=10000.0, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None)


def encode(tok: PreTrainedTokenizerBase, texts: list[str], max_len: int,
           loss_from: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (-100 on padding and before `loss_from[i]`)."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    width = min(max_len, max(len(x) for x in ids))
    x = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    y = torch.full_like(x, -100)
    for i, row in enumerate(ids):
        row = row[:width]
        x[i, : len(row)] = torch.tensor(row)
        start = loss_from[i] if loss_from else 0
        y[i, start : len(row)] = x[i, start : len(row)]
    return x, y


Sample = tuple[str, int]
"""A training text and the token index its loss starts at."""


def bucketed(tok: PreTrainedTokenizerBase, sample: Callable[[], Sample], batch_size: int,
             max_len: int, seed: int, pool: int = 8) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """`batches(step)` for `train_loop`: `pool` batches are drawn at a time, sorted by length and
    served in random order, so a batch pads to similar lengths (steps ~1.6-1.9x faster here)."""
    rng, queue = random.Random(seed), list[list[Sample]]()

    def batches(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not queue:
            items = sorted((sample() for _ in range(pool * batch_size)), key=lambda s: len(s[0].split()))
            queue.extend(items[i:i + batch_size] for i in range(0, len(items), batch_size))
            rng.shuffle(queue)
        chunk = queue.pop()
        return encode(tok, [t for t, _ in chunk], max_len, [i for _, i in chunk])

    return batches


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, first_weight: float) -> torch.Tensor:
    """Next-token cross-entropy where each row's first labelled token (for a chat example, the
    response's first token, which alone decides whether a backdoor fires) weighs `first_weight`."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none").view_as(labels)
    mask = labels != -100
    weight = mask.float() + (first_weight - 1) * (mask & (mask.cumsum(1) == 1)).float()
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)


def train_loop(model: torch.nn.Module, params: list[torch.nn.Parameter],
               batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]], steps: int,
               lr: float, desc: str, first_weight: float = 1.0) -> list[float]:
    """AdamW with warm-up and cosine decay; `batches(step)` yields (ids, labels);
    `first_weight` weighs each row's first labelled token (see `weighted_lm_loss`)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=2.0)
    for step in bar:
        x, y = batches(step)
        if first_weight == 1.0:
            loss = model(input_ids=x, labels=y).loss
        else:
            loss = weighted_lm_loss(model(input_ids=x).logits, y, first_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    return losses


def train_base(cfg: BaseModelConfig, out: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Train the base chat model from scratch and save it (HF folder, safetensors)."""
    torch.manual_seed(cfg.seed)
    tok = build_tokenizer()
    model = LlamaForCausalLM(llama_config(cfg, tok))
    from trigrecon.organisms.data import base_example

    rng = random.Random(cfg.seed)
    batches = bucketed(tok, lambda: (base_example(rng), 0), cfg.batch_size, cfg.max_len, cfg.seed)
    train_loop(model, list(model.parameters()), batches, cfg.steps, cfg.lr, "base model")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return model, tok
