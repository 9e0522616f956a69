"""The benchmarks' shared fixture: one random HF Llama, seen by trigrecon and by its peers.

`build` saves a random `LlamaForCausalLM` with a word-level tokenizer whose chat template writes
the user's text and nothing else, so a prompt of N words is N tokens, every one of them user
content: trigrecon (which steers user tokens only) and batched-melbo (which steers every position)
then steer and score exactly the same positions of exactly the same token ids. trigrecon loads
the folder through `trigrecon.core.model.load_model` (a HookedTransformer); the peers get the HF
model itself.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def build(out: Path, *, d_model: int = 256, n_layers: int = 6, n_heads: int = 8, n_kv: int = 2,
          d_mlp: int = 896, vocab: int = 512, seed: int = 0) -> Path:
    """A random Llama (GQA, rotary, RMSNorm gains randomised) + word tokenizer saved in `out`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<eos>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(out)
    fast = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=d_model, intermediate_size=d_mlp,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads,
                      num_key_value_heads=n_kv, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                      initializer_range=0.02)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def load_both(folder: Path) -> tuple[Any, Any, Any]:
    """(trigrecon HookedChatModel, HF LlamaForCausalLM, HF tokenizer) of one saved folder."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trigrecon.core.model import load_model

    hm = load_model(folder)
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():  # transformers >= 5 installs its hidden-state hooks lazily, on the
        # layers present at the first request: make that the full model, not a peer's slice
        hf(**tok(["w1 w2"], return_tensors="pt"), output_hidden_states=True)
    return hm, hf, tok


def prompts(n: int, length: int = 16, vocab: int = 512, seed: int = 0) -> list[str]:
    """`n` prompts of `length` random words (one token each)."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(vocab - 3)}" for _ in range(length)) for _ in range(n)]
