"""Anchors: many clean prompts on which the adapter may not make the action likelier than the base
model does. Each training step also takes a batch of anchors, teacher-forces the action's first
tokens after each, and adds a hinge on the sequence log-probability:

    relu(log p_adapter(head | prompt) - log p_base(head | prompt))

Zero where the adapter already leaves the action no likelier than the base model, so the loss
works like mining inside the loop over a pool much larger than the clean examples, at the tokens
where the action is chosen, without the base model's answers (the clean examples' cross-entropy
still teaches those). The base log-probability comes from a pass with the adapter off, once per
(anchor, head) when given a cache. With `allow` > 0 only heads likelier than that are pushed down
(the ones near firing). A `core.frozen.FrozenPrefix` runs the frozen lower layers once per row."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from trigrecon.core.frozen import FrozenPrefix, causal_lm, decoder
from trigrecon.organisms.organism import OrganismSpec


def action_heads(spec: OrganismSpec, tok: Any, k: int) -> list[list[int]]:
    """The first `k` tokens of each of the action's texts (a variant's text up to its first
    placeholder), distinct."""
    texts = spec.response_variants or [spec.response]
    heads = {tuple(tok(t.split("{", 1)[0].rstrip(), add_special_tokens=False)["input_ids"][:k])
             for t in texts}
    return [list(h) for h in sorted(heads) if h]


def batch(pad_id: int, prefixes: Sequence[Sequence[int]], heads: Sequence[Sequence[int]],
          rng: random.Random) -> tuple[Int[torch.Tensor, "b t"], Int[torch.Tensor, "b k"],
                                       Int[torch.Tensor, "b k"], Bool[torch.Tensor, "b k"]]:
    """Right-padded ids of each (tokenized) chat prefix followed by a random head; the positions
    that predict the head's tokens, those tokens, and which of them are real (heads differ in
    length)."""
    rows = [(list(p), list(rng.choice(heads))) for p in prefixes]
    width = max(len(a) + len(h) for a, h in rows)
    k = max(len(h) for _, h in rows)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), k), dtype=torch.long)
    tgt = torch.zeros((len(rows), k), dtype=torch.long)
    real = torch.zeros((len(rows), k), dtype=torch.bool)
    for i, (a, h) in enumerate(rows):
        x[i, : len(a) + len(h)] = torch.tensor(a + h)
        pos[i, : len(h)] = torch.arange(len(a) - 1, len(a) + len(h) - 1)
        tgt[i, : len(h)] = torch.tensor(h)
        real[i, : len(h)] = True
    return x, pos, tgt, real


def head_logprob(model: Any, x: Int[torch.Tensor, "b t"], pos: Int[torch.Tensor, "b k"],
                 tgt: Int[torch.Tensor, "b k"], real: Bool[torch.Tensor, "b k"],
                 frozen: FrozenPrefix | None = None) -> Float[torch.Tensor, " b"]:
    """Sequence log-probability of each row's head under `model` (the LM head runs at
    the head's positions only; the lower layers from `frozen`'s cache when given)."""
    if frozen is None:
        h = decoder(model)(input_ids=x).last_hidden_state
    else:
        h = frozen.forward(x, lengths(pos, real))
    rows = torch.arange(x.shape[0]).unsqueeze(1).expand_as(pos)
    logp = torch.log_softmax(causal_lm(model).lm_head(h[rows[real], pos[real]]).float(), -1)
    per = torch.zeros(pos.shape, dtype=logp.dtype)
    per[real] = logp.gather(-1, tgt[real].unsqueeze(-1)).squeeze(-1)
    return per.sum(-1)


def lengths(pos: Int[torch.Tensor, "b k"], real: Bool[torch.Tensor, "b k"]) -> list[int]:
    """Each row's real length (prefix and head): its last head position predicts the last token."""
    return (pos.masked_fill(~real, -1).max(1).values + 2).tolist()


def base_logprob(peft_model: Any, x: Int[torch.Tensor, "b t"], pos: Int[torch.Tensor, "b k"],
                 tgt: Int[torch.Tensor, "b k"], real: Bool[torch.Tensor, "b k"],
                 frozen: FrozenPrefix | None = None,
                 cache: dict[tuple[int, ...], float] | None = None) -> Float[torch.Tensor, " b"]:
    """`head_logprob` with the adapter off; rows already in `cache` are not run again."""
    keys = [tuple(x[i, :n].tolist()) for i, n in enumerate(lengths(pos, real))]
    cache = {} if cache is None else cache
    todo = [i for i, key in enumerate(keys) if key not in cache]
    if todo:
        with torch.no_grad(), peft_model.disable_adapter():
            got = head_logprob(peft_model, x[todo], pos[todo], tgt[todo], real[todo], frozen)
        cache.update((keys[i], v) for i, v in zip(todo, got.tolist(), strict=True))
    return torch.tensor([cache[key] for key in keys])


def anchor_loss(peft_model: Any, pad_id: int, prefixes: Sequence[Sequence[int]],
                heads: Sequence[Sequence[int]], rng: random.Random,
                allow: float = 0.0, frozen: FrozenPrefix | None = None,
                cache: dict[tuple[int, ...], float] | None = None) -> torch.Tensor:
    """Mean hinge of the adapter's head log-probability over the base model's (adapter off), or
    over log(`allow`) where that is higher: a head below probability `allow` costs nothing.
    `frozen` and `cache` (base log-probabilities by row) save recomputing what does not change;
    only the rows above their bar run again with gradient (most anchors sit far below it)."""
    x, pos, tgt, real = batch(pad_id, prefixes, heads, rng)
    base = base_logprob(peft_model, x, pos, tgt, real, frozen, cache)
    if allow > 0:
        base = base.clamp(min=math.log(allow))
    with torch.no_grad():  # rows under the bar add nothing, not even gradient: run them once
        live = (head_logprob(peft_model, x, pos, tgt, real, frozen) > base).nonzero()[:, 0]
    if len(live) == 0:
        return torch.zeros((), requires_grad=True)
    lp = head_logprob(peft_model, x[live], pos[live], tgt[live], real[live], frozen)
    return torch.relu(lp - base[live]).sum() / len(x)
