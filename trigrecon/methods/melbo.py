"""Unsupervised MELBO (Mack & Turner, 2024): vectors of fixed norm R at a source layer that
maximise the downstream change (sum_t ||dh_t||^p)^(1/q) at a target layer, averaged over prompts.

Vectors are trained K at a time on the cached source-layer residual (`SteeredForward`), exactly
orthogonal through a differentiable Gram-Schmidt (`ortho.orthogonalize`). Norms are expressed in
units of the residual scale (median user-token residual norm at the source layer), so one
default serves models of any width. Steering acts on user tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from trigrecon.core.errors import ConfigError
from trigrecon.methods.common import (
    SteeringResult,
    VectorConfig,
    make_batch,
    resolve_layer,
    resolve_target,
    user_resid_sample,
)
from trigrecon.steering.forward import SteeredForward
from trigrecon.steering.optim import LoopSettings, Trained, train_orthogonal
from trigrecon.steering.ortho import orthogonalize
from trigrecon.steering.readout import read_vector


@dataclass
class MelboConfig(VectorConfig):
    n_vectors: int = 8
    target_layer: int | None = None
    """Layer of the divergence; None: three quarters of the depth."""
    norm: float = 1.0
    """R, in units of the residual scale at the source layer."""
    p: float = 2.0
    q: float | None = None
    """None: q = p (the MELBO code's default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.norm > 0:
            raise ConfigError(f"norm={self.norm} must be positive")
        if not self.p > 0 or (self.q is not None and not self.q > 0):
            raise ConfigError(f"MELBO exponents p={self.p}, q={self.q} must be positive")


def _settings(cfg: VectorConfig, scale: float, desc: str, renormalize: bool) -> LoopSettings:
    return LoopSettings(cfg.n_vectors, cfg.per_round, cfg.steps, cfg.lr, cfg.seed,
                        cfg.max_norm * scale, renormalize, desc)


def random_init(dim: int, device: torch.device) -> Any:
    def init(k: int, gen: torch.Generator) -> Tensor:
        return torch.nn.functional.normalize(torch.randn(k, dim, generator=gen), dim=-1).to(device)

    return init


def finish(method: str, fwd: SteeredForward, trained: Trained, cfg: Any, scale: float, *,
           sae: Any, labels: Any, higher_is_better: bool, codes: Tensor | None = None,
           target: int | None = None) -> SteeringResult:
    """Package trained vectors with their latent readouts, best first."""
    losses = trained.final_main.tolist()
    order = sorted(range(len(losses)), key=lambda i: -losses[i] if higher_is_better else losses[i])
    base = user_resid_sample(fwd) if sae is not None else None
    readouts = [read_vector(i, trained.vectors[i], losses[i], sae=sae, labels=labels,
                            code=None if codes is None else codes[i], base=base)
                for i in range(len(losses))]
    return SteeringResult(method, fwd.source, trained.vectors.cpu(),
                          None if codes is None else codes.cpu(), trained.history.cpu(),
                          losses, order, scale, asdict(cfg), target, readouts)


def melbo(hm: Any, prompts: Sequence[str], cfg: MelboConfig | None = None, *, sae: Any = None,
          labels: Any = None) -> SteeringResult:
    """Train `cfg.n_vectors` orthogonal fixed-norm vectors maximising the MELBO objective."""
    cfg = cfg or MelboConfig()
    layer = resolve_layer(hm, cfg.layer, sae)
    target = resolve_target(hm, layer, cfg.target_layer)
    fwd = SteeredForward(hm, make_batch(hm, prompts), layer, target, compile=cfg.compile)
    scale = fwd.resid_scale()
    radius = cfg.norm * scale
    q = cfg.q if cfg.q is not None else cfg.p

    def to_vectors(params: Tensor, prev: Tensor | None) -> tuple[Tensor, Tensor]:
        v = radius * orthogonalize(params, prev, normalize=True)
        return v, v

    def loss_fn(vectors: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        obj = fwd.melbo_objective(vectors, cfg.p, q)
        return -obj / scale, obj

    trained = train_orthogonal(random_init(fwd.d_model, fwd.resid.device), to_vectors, loss_fn,
                               _settings(cfg, scale, "melbo", renormalize=True))
    return finish("melbo", fwd, trained, cfg, scale, sae=sae, labels=labels,
                  higher_is_better=True, target=target)
