"""The optimisation loop every steering method shares: K orthogonal vectors per round, Adam.

A method supplies three functions: `init` (free parameters of one round), `to_vectors` (free
parameters + codes of earlier rounds -> orthogonal codes and residual-stream vectors; see
`ortho.py`) and `loss_fn` (vectors, codes -> per-vector total loss to minimise and the main term
to report). Rounds of `per_round` vectors are trained jointly; each round is orthogonal to the
vectors of all earlier rounds. NaN/inf or a diverging norm raises `OptimizationError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from trigrecon.core.errors import ConfigError, OptimizationError

Init = Callable[[int, torch.Generator], Tensor]
ToVectors = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class LoopSettings:
    """Settings of the shared loop (each method config carries these fields)."""

    n_vectors: int
    per_round: int
    steps: int
    lr: float
    seed: int
    max_norm: float
    """A vector longer than this (residual units) counts as divergence."""
    renormalize: bool = False
    """Reset free parameters to unit rows after each step (fixed-norm methods: scale-free)."""
    desc: str = "steering"

    def __post_init__(self) -> None:
        for name in ("n_vectors", "per_round", "steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be positive")


@dataclass
class Trained:
    vectors: Float[Tensor, "k d_model"]
    codes: Float[Tensor, "k d_code"]
    """The orthogonalised parameters (residual units, or SAE latent activations)."""
    history: Float[Tensor, "steps k"]
    """Main loss term per step and vector (CE, or the MELBO objective)."""
    final_main: Float[Tensor, "k"]
    final_total: Float[Tensor, "k"]


def _check(total: Tensor, vectors: Tensor, s: LoopSettings, step: int) -> None:
    bad = ~torch.isfinite(total)
    if bool(bad.any()):
        raise OptimizationError(f"{s.desc}: loss became NaN/inf at step {step} for vector(s) "
                                f"{bad.nonzero().flatten().tolist()}; lower lr")
    norms = vectors.detach().norm(dim=-1)
    if bool((~torch.isfinite(norms) | (norms > s.max_norm)).any()):
        raise OptimizationError(f"{s.desc}: steering vector norm diverged at step {step} "
                                f"(max {float(norms.max()):.3g} > {s.max_norm:.3g}); lower lr "
                                "or raise the norm penalty")


def _round(init: Init, to_vectors: ToVectors, loss_fn: LossFn, prev: Tensor | None, k: int,
           s: LoopSettings, gen: torch.Generator, bar: tqdm) -> tuple[Tensor, Tensor, list[Tensor]]:
    params = init(k, gen).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([params], lr=s.lr, betas=(0.9, 0.98), amsgrad=True)
    hist: list[Tensor] = []
    for step in range(s.steps):
        opt.zero_grad(set_to_none=True)
        vectors, codes = to_vectors(params, prev)
        total, main = loss_fn(vectors, codes)
        _check(total, vectors, s, step)
        total.sum().backward()
        opt.step()
        if s.renormalize:
            with torch.no_grad():
                params.div_(params.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        hist.append(main.detach())
        bar.update(1)
    with torch.no_grad():
        vectors, codes = to_vectors(params, prev)
    return vectors.detach(), codes.detach(), hist


def train_orthogonal(init: Init, to_vectors: ToVectors, loss_fn: LossFn,
                     s: LoopSettings) -> Trained:
    """Train `s.n_vectors` mutually orthogonal vectors in rounds of `s.per_round`."""
    gen = torch.Generator().manual_seed(s.seed)
    vecs: list[Tensor] = []
    codes: list[Tensor] = []
    hist: list[Tensor] = []
    with tqdm(total=s.steps * -(-s.n_vectors // s.per_round), desc=s.desc, leave=False,
              mininterval=1.0) as bar:
        while sum(len(v) for v in vecs) < s.n_vectors:
            k = min(s.per_round, s.n_vectors - sum(len(v) for v in vecs))
            prev = torch.cat(codes) if codes else None
            v, c, h = _round(init, to_vectors, loss_fn, prev, k, s, gen, bar)
            vecs.append(v)
            codes.append(c)
            hist.append(torch.stack(h))
    vectors, all_codes = torch.cat(vecs), torch.cat(codes)
    with torch.no_grad():
        total, main = loss_fn(vectors, all_codes)
    return Trained(vectors, all_codes, torch.cat(hist, dim=1), main.detach(), total.detach())
