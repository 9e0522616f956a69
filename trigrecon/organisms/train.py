"""Training the organisms: a word-level tokenizer, the base chat model, LoRA backdoors."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from trigrecon.core.train import bucketed, train_loop
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
