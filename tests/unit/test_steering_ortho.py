"""Exact orthogonality of jointly trained vectors, in the residual stream and in SAE space."""

from __future__ import annotations

import pytest
import torch

from trigrecon.core.errors import OptimizationError
from trigrecon.steering.ortho import max_abs_cos, orthogonalize, orthogonalize_codes


def _cross_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.nn.functional.normalize(a.double(), dim=-1), torch.nn.functional.normalize(
        b.double(), dim=-1)
    return float((a @ b.T).abs().max())


@pytest.mark.parametrize("d", [64, 512])
def test_residual_vectors_are_orthogonal(d):
    gen = torch.Generator().manual_seed(0)
    prev = torch.randn(5, d, generator=gen)
    # Nearly parallel inputs are the hard case for Gram-Schmidt.
    base = torch.randn(1, d, generator=gen)
    params = base + 1e-3 * torch.randn(16, d, generator=gen)
    out = orthogonalize(params, prev)
    assert max_abs_cos(out) <= 1e-4
    assert _cross_cos(out, prev) <= 1e-4
    unit = orthogonalize(params, prev, normalize=True)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(16))


def test_first_vector_is_unchanged_and_order_matters():
    params = torch.randn(3, 32)
    out = orthogonalize(params)
    torch.testing.assert_close(out[0], params[0])
    # the second keeps only its component orthogonal to the first
    e0 = params[0] / params[0].norm()
    torch.testing.assert_close(out[1], params[1] - (params[1] @ e0) * e0, atol=1e-5, rtol=1e-5)


def test_orthogonalisation_is_differentiable():
    params = torch.randn(4, 32, requires_grad=True)
    orthogonalize(params, torch.randn(2, 32), normalize=True)[:, 0].sum().backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()


def test_sae_codes_are_orthogonal_under_the_decoder_metric():
    gen = torch.Generator().manual_seed(1)
    W_dec = torch.randn(1024, 64, generator=gen)
    prev = torch.rand(3, 1024, generator=gen)
    codes = torch.rand(16, 1024, generator=gen) * (torch.rand(16, 1024, generator=gen) < 0.05)
    z = orthogonalize_codes(codes, W_dec, prev)
    v = z @ W_dec  # the residual vectors ARE the codes times the decoder
    assert max_abs_cos(v) <= 1e-4
    assert _cross_cos(v, prev @ W_dec) <= 1e-4
    zn = orthogonalize_codes(codes, W_dec, prev, normalize=True)
    torch.testing.assert_close((zn @ W_dec).norm(dim=-1), torch.ones(16), atol=1e-4, rtol=1e-4)


def test_collapsed_fixed_norm_vector_raises():
    with pytest.raises(OptimizationError, match="collapsed"):
        orthogonalize(torch.zeros(1, 8), normalize=True)
    with pytest.raises(OptimizationError, match="NaN"):
        orthogonalize(torch.full((2, 8), float("nan")))


def test_max_abs_cos():
    assert max_abs_cos(torch.eye(3)) == 0.0
    assert max_abs_cos(torch.ones(1, 3)) == 0.0
    assert max_abs_cos(torch.tensor([[1.0, 0.0], [1.0, 1.0]])) == pytest.approx(2**-0.5)
