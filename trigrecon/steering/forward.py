"""The steered forward pass every optimiser shares.

Steering adds a vector to the residual stream at a *source* layer, on user-content tokens only.
Everything before the source layer is unaffected by the vector, so `SteeredForward` runs the
model up to the source layer ONCE per batch of prompts, caches that residual stream, and on each
optimisation step runs only blocks `source+1 .. target` (an unsupervised loss on target-layer
activations) or `source+1 .. end` (a cross-entropy loss, unembedding only response positions).
K vectors are evaluated in one pass by stacking the cached batch K times (leading `k` dim).

Layer convention: "layer L" is the residual stream at `hm.hook_name(L)` (TransformerLens
`blocks.L.hook_resid_post`, i.e. the output of block L; `hook_resid_pre` is also understood).
`full_forward_with_vector` is the plain reference: a full forward from the tokens with a hook.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from trigrecon.core.chat import ChatBatch
from trigrecon.core.errors import ConfigError
from trigrecon.steering.losses import check_response, response_ce_rows


def resid_bounds(hm: Any, layer: int) -> tuple[int, int]:
    """(stop_at_layer that returns the layer's residual, start_at_layer that continues from it)."""
    hm.check_layer(layer, "steering layer")
    name = hm.hook_name(layer)
    if name.endswith("hook_resid_pre"):
        return layer, layer
    if name.endswith("hook_resid_post"):
        return layer + 1, layer + 1
    raise ConfigError(f"hook {name!r} for layer {layer} is not a residual-stream hook")


def add_to_user_tokens(
    resid: Float[Tensor, "batch pos d_model"],
    vectors: Float[Tensor, "k d_model"],
    user_mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, "k batch pos d_model"]:
    """resid + vectors[k] on user-content positions, for every k (a [k, batch, pos, d] stack)."""
    mask = user_mask.to(resid.dtype)[None, :, :, None]
    return resid[None] + mask * vectors[:, None, None, :]


class SteeredForward:
    """Cached, partial steered forward for one batch of prompts.

    >>> fwd = SteeredForward(hm, batch, source=1, target=3)
    >>> acts = fwd.target_resid(vectors)       # [k, batch, pos, d_model]
    >>> logits = fwd.response_logits(vectors)  # [k, n_resp, d_vocab] (CE positions only)
    """

    def __init__(self, hm: Any, batch: ChatBatch, source: int, target: int | None = None) -> None:
        if len(batch) == 0:
            raise ConfigError("no prompts: the batch is empty")
        self.hm, self.source, self.target = hm, source, target
        stop, self.start = resid_bounds(hm, source)
        self.target_stop: int | None = None
        if target is not None:
            self.target_stop, _ = resid_bounds(hm, target)
            if self.target_stop <= stop:
                raise ConfigError(f"target layer {target} must come after source layer {source}")
        model = hm.model
        self.batch = batch.to(next(model.parameters()).device)
        self.mask = self.batch.attention_mask.long()
        with torch.no_grad():
            self.resid: Float[Tensor, "batch pos d_model"] = model(
                self.batch.tokens, attention_mask=self.mask, stop_at_layer=stop).detach()
        # Response positions: the logits at t predict token t+1.
        rm = self.batch.response_mask[:, 1:]
        self.resp_rows, self.resp_pos = rm.nonzero(as_tuple=True)
        self.resp_targets = self.batch.tokens[:, 1:][rm]
        self._base: Tensor | None = None

    @property
    def d_model(self) -> int:
        return int(self.resid.shape[-1])

    def _steered(self, vectors: Tensor) -> Tensor:
        if vectors.ndim != 2 or vectors.shape[-1] != self.d_model:
            raise ConfigError(f"vectors must be [k, {self.d_model}], got {tuple(vectors.shape)}")
        steered = add_to_user_tokens(self.resid, vectors.to(self.resid), self.batch.user_mask)
        return steered.reshape(-1, *self.resid.shape[1:])

    def _run(self, resid: Tensor, stop: int | None) -> Tensor:
        reps = resid.shape[0] // len(self.batch)
        return self.hm.model(resid, start_at_layer=self.start, stop_at_layer=stop,
                             attention_mask=self.mask.repeat(reps, 1))

    def _unstack(self, out: Tensor, k: int) -> Tensor:
        return out.reshape(k, len(self.batch), *out.shape[1:])

    def target_resid(self, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k batch pos d_model"]:
        """Residual stream at the target layer, running only blocks source+1..target."""
        if self.target_stop is None:
            raise ConfigError("SteeredForward was built without a target layer")
        return self._unstack(self._run(self._steered(vectors), self.target_stop), len(vectors))

    def base_target_resid(self) -> Float[Tensor, "batch pos d_model"]:
        """The unsteered target-layer residual (computed once)."""
        if self._base is None:
            with torch.no_grad():
                self._base = self._run(self.resid, self.target_stop).detach()
        return self._base

    def logits(self, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k batch pos d_vocab"]:
        """Full logits of the steered batch."""
        return self._unstack(self._run(self._steered(vectors), None), len(vectors))

    def response_logits(self, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k n_resp d_vocab"]:
        """Logits only where they predict a response token (unembedding only those positions)."""
        return self.response_logits_from(self._steered(vectors))

    def response_logits_from(self, resid: Float[Tensor, "rows pos d_model"]) -> Tensor:
        """Response-position logits from source-layer residuals of k stacked copies of the batch."""
        model = self.hm.model
        k = resid.shape[0] // len(self.batch)
        final = self._unstack(self._run(resid, model.cfg.n_layers), k)
        picked = final[:, self.resp_rows, self.resp_pos]
        if model.cfg.normalization_type is not None:
            picked = model.ln_final(picked)
        logits = model.unembed(picked)
        cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def response_ce_rows(self, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k batch"]:
        """Per-prompt cross-entropy of the pre-filled response under each vector."""
        check_response(self.batch.response_mask)
        return response_ce_rows(self.response_logits(vectors), self.resp_targets,
                                self.resp_rows, len(self.batch))

    def response_ce(self, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k"]:
        """Mean (over prompts) cross-entropy of the pre-filled response under each vector."""
        return self.response_ce_rows(vectors).mean(-1)

    def resid_scale(self) -> float:
        """Median norm of the source-layer residual on user tokens: the unit of steering norms."""
        norms = self.resid[self.batch.user_mask].norm(dim=-1)
        return float(norms.median()) if norms.numel() else 1.0


def full_forward_with_vector(
    hm: Any, batch: ChatBatch, layer: int, vector: Float[Tensor, "d_model"],
    stop_at_layer: int | None = None,
) -> Tensor:
    """Reference path: a full forward from the tokens with the shared steering hook at `layer`."""
    from trigrecon.core.hooks import steering

    batch = batch.to(next(hm.model.parameters()).device)
    with steering(hm, layer, vector, batch.user_mask) as model:
        return model(batch.tokens, attention_mask=batch.attention_mask.long(),
                     stop_at_layer=stop_at_layer)
