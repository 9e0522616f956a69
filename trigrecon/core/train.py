"""Generic training helpers shared by the toolkit and its test worlds: padded chat encoding,
length-bucketed batches, a first-token-weighted LM loss and an AdamW training loop."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase


def encode(tok: PreTrainedTokenizerBase, texts: list[str], max_len: int,
           loss_from: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (-100 on padding and before `loss_from[i]`)."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return encode_ids(ids, tok.pad_token_id, max_len, loss_from)


def encode_ids(ids: list[list[int]], pad_id: int, max_len: int,
               loss_from: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`encode` for texts tokenized already (a loop that meets them again tokenizes them once)."""
    width = min(max_len, max(len(x) for x in ids))
    x = torch.full((len(ids), width), pad_id, dtype=torch.long)
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
