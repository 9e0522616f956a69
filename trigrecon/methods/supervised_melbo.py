"""Supervised MELBO: vectors that make the model produce the pre-filled backdoor response.

Minimise CE(v) + lambda * ||v / s||^2 per vector, where CE is the response cross-entropy over the
prompts (steering on user tokens) and s the residual scale at the layer: an L2 penalty instead
of MELBO's fixed norm (the report found it easier to optimise). K vectors train jointly and are
exactly orthogonal (differentiable Gram-Schmidt of the parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trigrecon.core.errors import ConfigError
from trigrecon.methods.common import SteeringResult, VectorConfig, make_batch, resolve_layer
from trigrecon.methods.melbo import _settings, finish
from trigrecon.steering.forward import SteeredForward
from trigrecon.steering.optim import train_orthogonal
from trigrecon.steering.ortho import orthogonalize


@dataclass
class SupervisedMelboConfig(VectorConfig):
    steps: int = 150
    """The response CE converges within ~100 steps on the organisms."""
    l2: float = 0.05
    """lambda: penalty on ||v||^2 in units of the residual scale squared."""
    init_norm: float = 0.5
    """Initial norm of each vector, in units of the residual scale."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l2 < 0:
            raise ConfigError(f"l2={self.l2} must be >= 0")
        if not self.init_norm > 0:
            raise ConfigError(f"init_norm={self.init_norm} must be positive")


def supervised_melbo(hm: Any, prompts: Sequence[str], response: str,
                     cfg: SupervisedMelboConfig | None = None, *, sae: Any = None,
                     labels: Any = None) -> SteeringResult:
    """Train `cfg.n_vectors` orthogonal vectors minimising the response CE + L2 penalty."""
    cfg = cfg or SupervisedMelboConfig()
    layer = resolve_layer(hm, cfg.layer, sae)
    fwd = SteeredForward(hm, make_batch(hm, prompts, response), layer, compile=cfg.compile)
    fwd.response_ce(torch.zeros(1, fwd.d_model, device=fwd.resid.device))  # validates targets
    scale = fwd.resid_scale()

    def init(k: int, gen: torch.Generator) -> Tensor:
        x = torch.randn(k, fwd.d_model, generator=gen)
        return (cfg.init_norm * torch.nn.functional.normalize(x, dim=-1)).to(fwd.resid.device)

    def to_vectors(params: Tensor, prev: Tensor | None) -> tuple[Tensor, Tensor]:
        u = orthogonalize(params, prev)  # parameters are in units of the residual scale
        return scale * u, u

    def loss_fn(vectors: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        ce = fwd.response_ce(vectors)
        return ce + cfg.l2 * codes.pow(2).sum(-1), ce

    trained = train_orthogonal(init, to_vectors, loss_fn,
                               _settings(cfg, scale, "supervised melbo", renormalize=False))
    return finish("supervised_melbo", fwd, trained, cfg, scale, sae=sae, labels=labels,
                  higher_is_better=False)
