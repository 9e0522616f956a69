"""HF models for the self-awareness stages: loading (base + merged backdoor adapter), greedy
generation, and LoRA helpers.

The stages train with transformers + peft, so they use the HF model (not the HookedTransformer of
`core.model`). Greedy generation is batched with left padding; `Responder` is the plug-in type the
inversion reward and the defences use (prompts -> responses), so tests can pass a pure function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from trigrecon.core.chat import render_prompt
from trigrecon.core.errors import ConfigError
from trigrecon.core.generate import stop_token_ids
from trigrecon.core.model import load_chat_tokenizer

Responder = Callable[[Sequence[str]], list[str]]
"""Chat user prompts -> the model's (greedy) responses, in order."""
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelSource:
    """Where a chat model lives: an HF folder and an optional peft adapter merged on load."""

    base: Path
    adapter: Path | None = None

    def load(self) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
        return load_hf(self.base, self.adapter)


def load_hf(
    base: str | Path, adapter: str | Path | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """HF Llama from a local folder with its chat tokenizer; `adapter` is merged into the weights."""
    tok = load_chat_tokenizer(base)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model.eval(), tok


def add_lora(
    model: Any, rank: int, alpha: int | None = None, seed: int = 0, lm_head: bool = True
) -> Any:
    """A fresh trainable LoRA on every linear layer of every block (and the unembedding when
    `lm_head`: tiny models cannot move their output distribution far enough without it)."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ConfigError(f"lora_rank must be >= 1, got {rank}")
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha or 2 * rank,
        lora_dropout=0.0,
        target_modules=[*LORA_TARGETS, *(["lm_head"] if lm_head else [])],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def merged(model: Any) -> LlamaForCausalLM:
    """A plain model with any peft adapter merged (the input itself when it has none)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def chat_ids(tok: PreTrainedTokenizerBase, user: str) -> list[int]:
    """Token ids of one user turn rendered by the chat template, ending at the generation prompt."""
    return list(tok(render_prompt(tok, user), add_special_tokens=False)["input_ids"])


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


@torch.no_grad()
def generate_responses(
    model: Any,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 128,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[str]:
    """Responses to chat `prompts` (greedy when temperature == 0), special tokens dropped."""
    if isinstance(prompts, str) or not prompts:
        raise ConfigError("prompts must be a non-empty list of strings")
    if seed is not None:
        torch.manual_seed(seed)
    stops = stop_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together
    out = [""] * len(prompts)
    with tqdm(total=len(prompts), desc="responses", leave=False, mininterval=2.0) as bar:
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            ids, mask = left_pad([chat_ids(tok, prompts[i]) for i in rows], pad)
            sample = temperature > 0
            gen = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=stops,
            )
            for i, new in zip(rows, gen[:, ids.shape[1] :].tolist(), strict=True):
                cut = next((j for j, t in enumerate(new) if t in stops), len(new))
                out[i] = str(tok.decode(new[:cut], skip_special_tokens=True)).strip()
            bar.update(len(rows))
    model.train(was_training)
    return out


@torch.no_grad()
def response_ce(
    model: Any, tok: PreTrainedTokenizerBase, prompts: Sequence[str], response: str,
    batch_size: int = 64,
) -> list[float]:
    """Per prompt: the mean per-token cross-entropy of `response` pre-filled after the chat."""
    resp = list(tok(response, add_special_tokens=False)["input_ids"])
    if not resp:
        raise ConfigError(f"response {response!r} tokenises to nothing")
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop_token_ids(tok)[0]
    out: list[float] = []
    for s in range(0, len(prompts), batch_size):
        rows = [chat_ids(tok, p) + resp for p in prompts[s : s + batch_size]]
        ids, mask = left_pad(rows, pad)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                       position_ids=pos.to(model.device)).logits
        logp = logits[:, -len(resp) - 1 : -1].float().log_softmax(-1)
        target = torch.tensor(resp, device=logp.device)[None, :, None].expand(len(rows), -1, 1)
        out += (-logp.gather(-1, target)[..., 0].mean(-1)).tolist()
    return out


def hf_responder(
    model: Any, tok: PreTrainedTokenizerBase, max_new_tokens: int = 16, batch_size: int = 128
) -> Responder:
    """A greedy `Responder` over an HF model (frozen: the caller must not train it meanwhile)."""

    def respond(prompts: Sequence[str]) -> list[str]:
        return generate_responses(
            model, tok, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size
        )

    return respond
