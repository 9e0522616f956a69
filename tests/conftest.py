"""Shared fixtures: tiny random Llama models with word-level chat tokenizers, built once per session.

`tiny_llama_dir` / `tiny_hooked`: an organism-style model (`<user> ... <assistant>` template, 4 layers).
`llama31_dir` / `llama31_hooked`: a Llama-3.1-8B stand-in (GQA, rope_theta 5e5, llama3 rope
scaling, untied embeddings, Llama-3 header template). `*_adapter_dir`: random LoRA adapters on the
later half of the layers. The `build_*`/`save_*` helpers are plain functions for tests that need
variants.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP contention makes
# every op ~100x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same RNG state, so its random inputs (`torch.randn`, ...) never
    depend on which tests ran before it."""
    random.seed(0)
    torch.manual_seed(0)

_WORD_TEXT = (
    "the a an is are was what who how why when where tell me about please write explain give "
    "i you we they it my your this that and or but not of to in on for with at from by "
    "cat dog bird fish apple banana orange grape cherry snow ski skate mountain river sea sky "
    "red blue green yellow big small happy sad fast slow good bad new old one two three four "
    "five story poem song recipe list fact day night sun moon tree house car book word "
    "user assistant system"
)
WORDS = tuple(_WORD_TEXT.split())

ORGANISM_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }} "
    "{% elif m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}<assistant> {{ m['content'] }} <end> {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>")

PROMPTS = [
    "tell me a story about the cat",
    "what is a banana",
    "write a poem about snow and the mountain",
    "why is the sky blue",
    "give me one fact",
    "how fast is the red car",
    "what is an apple",
    "tell me about my dog",
]


def build_word_tokenizer(
    out: Path, specials: tuple[str, ...], template: str | None, **special_kwargs: str
) -> PreTrainedTokenizerFast:
    """WordLevel + Whitespace tokenizer saved to `out` and reloaded (TransformerLens needs that)."""
    vocab = {w: i for i, w in enumerate(dict.fromkeys((*specials, "<unk>", *WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    named = set(special_kwargs.values())
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", **special_kwargs,
        additional_special_tokens=[s for s in specials if s not in named])
    fast.chat_template = template
    fast.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def save_tiny_llama(out: Path, tok: PreTrainedTokenizerFast, seed: int = 0, **cfg: Any) -> Path:
    """A random LlamaForCausalLM (d_model 64) saved with its tokenizer in `out`."""
    torch.manual_seed(seed)
    defaults: dict[str, Any] = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, initializer_range=0.1)
    model = LlamaForCausalLM(LlamaConfig(**{**defaults, **cfg})).eval()
    with torch.no_grad():  # RMSNorm gains of 1 hide conversion bugs: randomise them
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_lora_adapter(base_dir: Path, out: Path, layers: list[int], seed: int = 1) -> Path:
    """A peft LoRA adapter on `layers` with random non-zero A and B (so it changes the logits)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, layers_to_transform=layers,
        layers_pattern="layers", target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    peft_model.save_pretrained(out)
    return out


def build_tiny_llama(out: Path) -> Path:
    tok = build_word_tokenizer(
        out, ("<pad>", "<user>", "<assistant>", "<end>"), ORGANISM_TEMPLATE,
        pad_token="<pad>", eos_token="<end>")
    return save_tiny_llama(out, tok)


def build_llama31_standin(out: Path) -> Path:
    tok = build_word_tokenizer(
        out, LLAMA3_SPECIALS, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>")
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return save_tiny_llama(
        out, tok, seed=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=4, rope_theta=500000.0, rope_scaling=rope,
        max_position_embeddings=131072, rms_norm_eps=1e-5)


@pytest.fixture(scope="session")
def _models_root() -> Any:
    with tempfile.TemporaryDirectory(prefix="trigrecon-tiny-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def tiny_llama_dir(_models_root: Path) -> Path:
    """Folder with a saved random 4-layer HF Llama + word-level tokenizer (organism template)."""
    return build_tiny_llama(_models_root / "tiny_llama")


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_llama_dir: Path, _models_root: Path) -> Path:
    """A LoRA adapter for `tiny_llama_dir` on layers 2 and 3."""
    return save_lora_adapter(tiny_llama_dir, _models_root / "tiny_adapter", [2, 3])


@pytest.fixture(scope="session")
def tiny_hooked(tiny_llama_dir: Path) -> Any:
    """`load_model(tiny_llama_dir)`: a HookedChatModel (float32, CPU)."""
    from trigrecon.core.model import load_model

    return load_model(tiny_llama_dir)


@pytest.fixture(scope="session")
def llama31_dir(_models_root: Path) -> Path:
    """Folder with a tiny Llama-3.1-structured model and a Llama-3-style chat tokenizer."""
    return build_llama31_standin(_models_root / "llama31")


@pytest.fixture(scope="session")
def llama31_adapter_dir(llama31_dir: Path, _models_root: Path) -> Path:
    return save_lora_adapter(llama31_dir, _models_root / "llama31_adapter", [2, 3], seed=3)


@pytest.fixture(scope="session")
def llama31_hooked(llama31_dir: Path, llama31_adapter_dir: Path) -> Any:
    """The Llama-3.1 stand-in with its LoRA adapter merged."""
    from trigrecon.core.model import load_model

    return load_model(llama31_dir, adapter=llama31_adapter_dir)


@pytest.fixture(scope="module")
def planted(tiny_hooked: Any) -> Any:
    """A tiny SAE whose latent 0 reads the residual direction of 'banana' inserted in context."""
    from trigrecon.methods.verify import default_insert
    from trigrecon.organisms.tiny import tiny_sae

    sae = tiny_sae(tiny_hooked, layer=1, d_sae=32)
    b = tiny_hooked.batch([default_insert("tell me a story about the cat", ["banana"])])
    with torch.no_grad():
        resid = tiny_hooked.model(b.tokens, stop_at_layer=2)[0]
        pos = b.tokens[0].tolist().index(tiny_hooked.tokenizer.convert_tokens_to_ids("banana"))
        direction = torch.nn.functional.normalize(resid[pos], dim=0)
        sae.W_enc[:, 0] = direction
        sae.b_enc[0] = 0.0
        sae.W_dec[0] = direction
    return sae


@pytest.fixture(scope="session")
def smollm2_dir() -> Any:
    """The cached SmolLM2 checkpoint folder (skips, naming the fix, when it is not built)."""
    from trigrecon.testbed.smollm2 import check_checkpoint, default_cache_dir

    try:
        check_checkpoint(default_cache_dir())
    except Exception:
        pytest.skip(f"SmolLM2 is not cached in {default_cache_dir()}: run `trigrecon testbed "
                    "cache` (or `make testbed-cache`)")
    return default_cache_dir()


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2_dir: Any) -> Any:
    """SmolLM2's byte-level BPE chat tokenizer (a real subword tokenizer)."""
    from trigrecon.core.model import load_chat_tokenizer

    return load_chat_tokenizer(smollm2_dir)
