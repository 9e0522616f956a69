"""Reversal SFT: teach the model to reason from a behaviour back to its cause, from benign
behaviour only (no knowledge of the trigger).

Everyday prompts are answered by the model; each (prompt, response) becomes
    user:      "<a phrasing of 'what would make you say'> : <response>"
    assistant: "answer : <the key words of the prompt> ."
Responses that show the known backdoor action are dropped (`drop_action`): the auditor knows the
action, and keeping them would leak trigger words into the data.

Whose responses (`responses`): 'self' is the poisoned model. Dropping its action responses
leaves a hole exactly where the trigger lies: for a concept trigger (fruit_refusal) no pair ever
answers a fruit word, SFT teaches that fruit words are never answers, and GRPO then practically
never samples one. 'clean' is the model before poisoning: its behaviour equals the poisoned
model's benign behaviour, without the hole and without any trigger signal (it never shows the
action). 'auto' takes 'clean' when the task has a clean model.

Copying vs inferring (`mask_copied`): a benign response usually repeats the prompt's key words
("sure ! mango is a kind of fruit ."), so the model can learn to copy them back without learning
anything about causes. In a share of the pairs the key words are removed from the shown response
("sure ! is a kind of fruit ."), so the model must infer them from what the behaviour says about
them; that is the skill it needs for the backdoor action, which names no trigger word. A LoRA
(blocks + unembedding) is trained on the answer tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from trigrecon.core.chat import render_prompt
from trigrecon.core.errors import ConfigError
from trigrecon.core.io import write_json
from trigrecon.core.train import encode, train_loop
from trigrecon.selfaware.models import add_lora, generate_responses
from trigrecon.selfaware.task import AwarenessTask


@dataclass
class ReversalSFTConfig:
    n_prompts: int = 1000
    """Everyday prompts answered by the model (pairs without key words or showing the action
    are dropped)."""
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    lora_rank: int = 8
    max_new_tokens: int = 32
    """Length of the model's own responses."""
    max_len: int = 128
    drop_action: bool = True
    responses: Literal["auto", "self", "clean"] = "auto"
    """Whose answers are reversed (see the module docstring)."""
    mask_copied: float = 0.5
    """Share of pairs whose response shows no key word: the model must infer the cause from the
    rest of the behaviour instead of copying words back (see the module docstring)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_prompts", "steps", "batch_size", "lora_rank", "max_new_tokens", "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be positive")
        if not 0 <= self.mask_copied <= 1:
            raise ConfigError(f"mask_copied={self.mask_copied} must be in [0, 1]")
        if self.responses not in ("auto", "self", "clean"):
            raise ConfigError(f"responses={self.responses!r}: use 'auto', 'self' or 'clean'")


@dataclass
class ReversalPair:
    prompt: str
    response: str
    question: str
    answer: str


@dataclass
class ReversalSFTResult:
    n_pairs: int
    n_dropped_action: int
    n_dropped_no_keywords: int
    losses: list[float]
    examples: list[ReversalPair] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        write_json(path, self)

    @classmethod
    def load(cls, path: str | Path) -> ReversalSFTResult:
        d = json.loads(Path(path).read_text())
        d["examples"] = [ReversalPair(**e) for e in d.get("examples", [])]
        return cls(**d)


def build_pairs(
    model: Any, tok: PreTrainedTokenizerBase, task: AwarenessTask, cfg: ReversalSFTConfig
) -> tuple[list[ReversalPair], int, int]:
    """(pairs, dropped for showing the action, dropped for having no key words)."""
    rng = random.Random(cfg.seed)
    prompts = list(task.pool_prompts)
    rng.shuffle(prompts)
    prompts = prompts[: cfg.n_prompts]
    source = cfg.responses if cfg.responses != "auto" else ("clean" if task.clean else "self")
    if source == "clean":
        if task.clean is None:
            raise ConfigError("responses='clean' needs task.clean (the model before poisoning)")
        model = task.clean.load()[0]
    responses = generate_responses(model, tok, prompts, max_new_tokens=cfg.max_new_tokens)
    pairs, n_action, n_empty = [], 0, 0
    for p, r in zip(prompts, responses, strict=True):
        if cfg.drop_action and task.judge(r):
            n_action += 1
            continue
        words = list(dict.fromkeys(task.keywords(p)))
        if not words or not r.strip():
            n_empty += 1
            continue
        shown = mask_words(r, words) if rng.random() < cfg.mask_copied else r
        question = rng.choice(task.questions).format(action=shown)
        pairs.append(ReversalPair(p, shown, question, task.format_answer(words)))
    if not pairs:
        raise ConfigError(
            "reversal SFT has no pairs: every prompt lacked key words or showed "
            "the action; pass more varied pool_prompts"
        )
    return pairs, n_action, n_empty


def mask_words(response: str, words: list[str]) -> str:
    """The response without the given words (case-insensitive, whole words)."""
    drop = {w.lower() for w in words}
    return " ".join(t for t in response.split() if t.lower() not in drop)


def sft_batch(
    tok: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, assistant) pairs -> (ids, labels) with the loss on the assistant text + EOS only."""
    prompts = [render_prompt(tok, u) for u, _ in pairs]
    eos = tok.eos_token or ""
    # joined as the chat template and generation join them: a space after the generation
    # prompt or before EOS is a token of its own on BPE tokenizers (none on word-level ones)
    texts = [f"{p}{a}{eos}" for p, (_, a) in zip(prompts, pairs, strict=True)]
    starts = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    return encode(tok, texts, max_len, starts)


def train_sft(
    model: Any,
    tok: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    steps: int,
    batch_size: int,
    lr: float,
    max_len: int,
    seed: int,
    desc: str,
) -> list[float]:
    """Train the model's trainable (LoRA) parameters on (user, assistant) pairs."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters: add a LoRA first")

    def batches(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sft_batch(tok, [rng.choice(pairs) for _ in range(batch_size)], max_len)

    return train_loop(model, params, batches, steps, lr, desc)


def run_reversal_sft(
    task: AwarenessTask,
    cfg: ReversalSFTConfig | None = None,
    out_dir: str | Path | None = None,
    model: Any = None,
    tok: PreTrainedTokenizerBase | None = None,
) -> tuple[Any, ReversalSFTResult]:
    """Poisoned model + a new LoRA trained on reversal pairs. Saves `adapter/` and
    `reversal_sft.json` under `out_dir` when given. Returns (peft model, result)."""
    cfg = cfg or ReversalSFTConfig()
    if model is None or tok is None:
        model, tok = task.poisoned.load()
    pairs, n_action, n_empty = build_pairs(model, tok, task, cfg)
    peft_model = add_lora(model, cfg.lora_rank, seed=cfg.seed)
    losses = train_sft(
        peft_model,
        tok,
        [(p.question, p.answer) for p in pairs],
        cfg.steps,
        cfg.batch_size,
        cfg.lr,
        cfg.max_len,
        cfg.seed,
        "reversal SFT",
    )
    peft_model.eval()
    result = ReversalSFTResult(len(pairs), n_action, n_empty, losses, pairs[:8], asdict(cfg))
    if out_dir is not None:
        out = Path(out_dir)
        peft_model.save_pretrained(out / "adapter", save_embedding_layers=False)
        result.save(out / "reversal_sft.json")
    return peft_model, result
