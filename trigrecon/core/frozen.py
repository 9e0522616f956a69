"""Frozen lower layers run once: while a causal LM trains only its layers from `k` on (LoRA on the
later half, say), the residual stream entering layer `k` of a fixed row of tokens never changes.
`FrozenPrefix` caches it per row and runs layers `k`.. only, so a training loop that meets the
same texts step after step (and round after round) pays for the lower layers once per text.

Rows are right-padded and attention is causal, so a row's real positions never see its pads and
the cache is keyed by the row's real tokens alone (`lengths`: a pad id may also be a real token,
such as SmolLM2's `<|im_end|>`). Pads get zeros: nothing real attends to them. The model is a
transformers decoder (`model.model.layers`, `.norm`) or a peft model wrapping one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int


def causal_lm(model: Any) -> Any:
    """The transformers causal LM itself (`.model`, `.lm_head`), also inside a peft model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model: Any) -> Any:
    """The decoder stack (`.layers`, `.norm`, `.embed_tokens`) of a causal LM or a peft model."""
    return causal_lm(model).model


def first_trainable(model: Any) -> int:
    """Index of the first layer with a trainable parameter or an adapter (0 when the embeddings
    train; the layer count when nothing does)."""
    dec = decoder(model)
    if any(p.requires_grad for p in dec.embed_tokens.parameters()):
        return 0
    for i, layer in enumerate(dec.layers):
        if any(p.requires_grad or "lora_" in n for n, p in layer.named_parameters()):
            return i
    return len(dec.layers)


class FrozenPrefix:
    """`forward(x, lengths)`: the decoder's last hidden states, layers below `k` read from a
    per-row cache (filled without grad)."""

    def __init__(self, model: Any) -> None:
        self.dec = decoder(model)
        self.k = first_trainable(model)
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    @contextmanager
    def _only(self, layers: slice, norm: bool) -> Iterator[None]:
        dec, saved = self.dec, (self.dec.layers, self.dec.norm)
        dec.layers = torch.nn.ModuleList(list(saved[0])[layers])
        if not norm:
            dec.norm = torch.nn.Identity()
        try:
            yield
        finally:
            dec.layers, dec.norm = saved

    def _fill(self, rows: Sequence[tuple[int, ...]]) -> None:
        width = max(len(r) for r in rows)
        x = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(r)
        with torch.no_grad(), self._only(slice(0, self.k), norm=False):
            h = self.dec(input_ids=x, use_cache=False).last_hidden_state
        for i, r in enumerate(rows):
            self._cache[r] = h[i, : len(r)].clone()

    def hidden(self, x: Int[torch.Tensor, "b t"], lengths: Sequence[int]
               ) -> Float[torch.Tensor, "b t d"]:
        """The residual stream entering layer `k` (zeros on pads)."""
        rows = [tuple(x[i, :n].tolist()) for i, n in enumerate(lengths)]
        if missing := [r for r in dict.fromkeys(rows) if r not in self._cache]:
            self._fill(missing)
        first = self._cache[rows[0]]
        h = torch.zeros((*x.shape, first.shape[-1]), dtype=first.dtype)
        for i, r in enumerate(rows):
            h[i, : len(r)] = self._cache[r]
        return h

    def forward(self, x: Int[torch.Tensor, "b t"], lengths: Sequence[int]
                ) -> Float[torch.Tensor, "b t d"]:
        if self.k == 0:
            return self.dec(input_ids=x, use_cache=False).last_hidden_state
        h = self.hidden(x, lengths)
        with self._only(slice(self.k, None), norm=True):
            return self.dec(inputs_embeds=h, use_cache=False).last_hidden_state
