"""SAE-Attribution: which SAE latents, added to the prompt, would make the action more likely?

One backward pass of the response cross-entropy L (the pre-filled backdoor action) gives the
gradient with respect to the residual stream h at the SAE's layer. It is averaged over the user
tokens of each prompt and then over prompts,

    g = mean_p mean_{t in user(p)} dL_p / dh_{p,t},

and projected through the decoder: score_i = W_dec[i] . g. The score is the first-order change
of the loss when latent i's decoder direction is added (with unit activation) on the user tokens.

Sign: NEGATIVE scores decrease the loss, i.e. they make the backdoor response more likely; the
ranking lists the most negative scores first (as `score`, unchanged sign).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from trigrecon.core.errors import ConfigError
from trigrecon.methods.common import Saveable, make_batch, resolve_layer
from trigrecon.steering.forward import SteeredForward
from trigrecon.steering.losses import check_response, response_ce_rows
from trigrecon.steering.readout import LatentHit, rank_latents


@dataclass
class SAEAttributionConfig:
    layer: int | None = None
    """Residual layer of the gradient; None: the SAE's layer."""
    batch_size: int = 32
    """Prompts per backward pass (memory only: the result does not depend on it)."""
    top_k: int = 20
    """Latents kept in the ranking."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "top_k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")


@dataclass
class AttributionResult(Saveable):
    NAME: ClassVar[str] = "sae_attribution"
    TENSORS: ClassVar[tuple[str, ...]] = ("scores", "grad")

    layer: int
    scores: Float[Tensor, "d_sae"]
    """W_dec @ g: negative = adding the latent lowers the response loss (promotes the action)."""
    grad: Float[Tensor, "d_model"]
    """g: loss gradient averaged over user tokens, then prompts."""
    base_loss: float
    """Unsteered response cross-entropy (mean over prompts)."""
    top: list[LatentHit]
    """Most negative scores first."""
    config: dict[str, Any]
    method: str = "sae_attribution"

    def ranking(self, k: int = 10) -> list[LatentHit]:
        return self.top[:k]

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> AttributionResult:
        data["top"] = [LatentHit(**h) for h in data["top"]]
        return cls(**data)


def attribution_gradient(hm: Any, prompts: Sequence[str], response: str, layer: int,
                         batch_size: int = 32) -> tuple[Float[Tensor, "d_model"], float]:
    """(g, mean response CE): the user-token- then prompt-averaged gradient at `layer`."""
    batch = make_batch(hm, prompts, response)
    check_response(batch.response_mask)
    total = None
    loss_sum = 0.0
    for start in range(0, len(batch), batch_size):
        sub = batch.select(slice(start, start + batch_size))
        fwd = SteeredForward(hm, sub, source=layer)
        resid = fwd.resid.clone().requires_grad_(True)
        ce = response_ce_rows(fwd.response_logits_from(resid[None]), fwd.resp_targets,
                              fwd.resp_rows, len(sub))[0]
        (grad,) = torch.autograd.grad(ce.sum(), resid)  # row p holds dL_p / dh_p
        um = fwd.batch.user_mask.to(grad)
        per_prompt = (grad * um[..., None]).sum(1) / um.sum(1, keepdim=True)
        part = per_prompt.sum(0)
        total = part if total is None else total + part
        loss_sum += float(ce.detach().sum())
    assert total is not None
    return total / len(batch), loss_sum / len(batch)


def sae_attribution(hm: Any, sae: Any, prompts: Sequence[str], response: str,
                    cfg: SAEAttributionConfig | None = None, labels: Any = None
                    ) -> AttributionResult:
    """Score every SAE latent by how much adding it would lower the response's loss."""
    cfg = cfg or SAEAttributionConfig()
    layer = resolve_layer(hm, cfg.layer, sae)
    g, base = attribution_gradient(hm, prompts, response, layer, cfg.batch_size)
    scores = sae.W_dec.detach() @ g.to(sae.W_dec)
    top = rank_latents(scores, cfg.top_k, labels, descending=False)
    return AttributionResult(layer, scores.detach().cpu(), g.detach().cpu(), base, top,
                             asdict(cfg))
