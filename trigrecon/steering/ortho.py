"""Exact mutual orthogonality of steering vectors, as a differentiable reparametrisation.

The optimisers keep free parameters and map them through Gram-Schmidt on every step, so the
vectors used in the forward pass are orthogonal to each other and to the vectors of earlier rounds
by construction (not by an approximate penalty or a projection after the step). Gram-Schmidt is
run twice ("twice is enough"), which keeps max |cos| near float precision.

For SAE-space vectors `v = z @ W_dec`, the same procedure runs on the latent codes `z` under the
metric `<z1, z2> = (z1 @ W_dec) . (z2 @ W_dec)`: every step is a linear combination of codes, so
`v = z @ W_dec` holds exactly for the returned codes AND the v's are orthogonal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from trigrecon.core.errors import OptimizationError

_EPS = 1e-12


def _gram_schmidt(
    x: Tensor, prev: Tensor | None, image: Callable[[Tensor], Tensor], normalize: bool,
) -> Tensor:
    """Orthogonalise the rows of `x` (after those of `prev`) under the metric of `image`.

    `image` is linear (identity, or z -> z @ W_dec); inner products are taken between images,
    while the combinations are applied to the rows of `x` themselves.
    """
    fixed_x: list[Tensor] = []
    fixed_img: list[Tensor] = []
    if prev is not None and len(prev):
        for row in prev:  # orthonormal basis of earlier rounds (constants)
            xi, img = _orthogonalise_row(row.detach(), image(row.detach()), fixed_x, fixed_img)
            if img.norm() > 1e-6 * max(float(image(row.detach()).norm()), _EPS):
                fixed_x.append(xi / img.norm())
                fixed_img.append(img / img.norm())
    out = []
    for row in x:
        xi, img = _orthogonalise_row(row, image(row), fixed_x, fixed_img)
        norm = img.norm()
        if not torch.isfinite(norm):
            raise OptimizationError("a steering vector became NaN/inf during orthogonalisation: "
                                    "lower the learning rate")
        if normalize and float(norm.detach()) < _EPS:
            raise OptimizationError("a fixed-norm steering vector collapsed to zero during "
                                    "orthogonalisation: train fewer vectors than d_model")
        norm = norm.clamp_min(_EPS)
        out.append(xi / norm if normalize else xi)
        fixed_x.append(xi / norm)
        fixed_img.append(img / norm)
    return torch.stack(out)


def _orthogonalise_row(
    xi: Tensor, img: Tensor, basis_x: list[Tensor], basis_img: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """Remove the components along an orthonormal basis, twice (classical GS, re-orthogonalised)."""
    if not basis_img:
        return xi, img
    bx, bi = torch.stack(basis_x), torch.stack(basis_img)
    for _ in range(2):
        c = bi @ img
        xi = xi - c @ bx
        img = img - c @ bi
    return xi, img


def orthogonalize(
    params: Float[Tensor, "k d_model"],
    prev: Float[Tensor, "m d_model"] | None = None,
    normalize: bool = False,
) -> Float[Tensor, "k d_model"]:
    """Differentiable Gram-Schmidt in the residual stream.

    Row i is made orthogonal to every row of `prev` and to rows 0..i-1; with `normalize` the rows
    have unit norm (scale them for a fixed norm R), otherwise their length is kept free.
    """
    return _gram_schmidt(params, prev, lambda r: r, normalize)


def orthogonalize_codes(
    codes: Float[Tensor, "k d_sae"],
    W_dec: Float[Tensor, "d_sae d_model"],
    prev: Float[Tensor, "m d_sae"] | None = None,
    normalize: bool = False,
) -> Float[Tensor, "k d_sae"]:
    """Gram-Schmidt of latent codes under the metric W_dec W_dec^T.

    Returns codes z' such that the vectors z' @ W_dec are mutually orthogonal and orthogonal to
    prev @ W_dec; with `normalize`, ||z'_i @ W_dec|| = 1.
    """
    W = W_dec.detach()
    return _gram_schmidt(codes, prev, lambda r: r @ W, normalize)


def max_abs_cos(vectors: Float[Tensor, "n d_model"]) -> float:
    """Largest |cosine| between two different rows (0.0 for fewer than two rows)."""
    if vectors.shape[0] < 2:
        return 0.0
    u = torch.nn.functional.normalize(vectors.double(), dim=-1)
    gram = (u @ u.T).abs()
    gram.fill_diagonal_(0.0)
    return float(gram.max())
