"""Losses of the optimisers: response cross-entropy and the MELBO divergence objective.

Both return one value per steering vector (a leading `k` dimension), so K vectors train in one
pass and `loss.sum()` gives each vector its own gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from trigrecon.core.errors import ConfigError


def check_response(response_mask: Bool[Tensor, "batch pos"]) -> None:
    """Every row needs at least one response token to be a cross-entropy target."""
    n = response_mask[:, 1:].sum(-1)
    if bool((n == 0).any()):
        bad = [int(i) for i in (n == 0).nonzero().flatten()]
        raise ConfigError(f"target response has no tokens for prompt row(s) {bad}: pass a "
                          "non-empty pre-filled response")


def response_ce_rows(
    logits: Float[Tensor, "k n_resp d_vocab"],
    targets: Int[Tensor, "n_resp"],
    rows: Int[Tensor, "n_resp"],
    n_rows: int,
) -> Float[Tensor, "k batch"]:
    """Cross-entropy of the pre-filled response per prompt: mean over its response tokens."""
    if targets.numel() == 0:
        raise ConfigError("target response has no tokens: pass a non-empty pre-filled response")
    k = logits.shape[0]
    tok_ce = F.cross_entropy(logits.flatten(0, 1), targets.repeat(k), reduction="none").view(k, -1)
    counts = torch.bincount(rows, minlength=n_rows).to(tok_ce)
    if bool((counts == 0).any()):
        raise ConfigError("target response has no tokens for some prompt: every prompt needs one")
    per_row = torch.zeros(k, n_rows, dtype=tok_ce.dtype, device=tok_ce.device)
    return per_row.index_add(1, rows, tok_ce) / counts


def response_ce(
    logits: Float[Tensor, "k n_resp d_vocab"],
    targets: Int[Tensor, "n_resp"],
    rows: Int[Tensor, "n_resp"],
    n_rows: int,
) -> Float[Tensor, "k"]:
    """Cross-entropy of the pre-filled response: mean over each prompt's response tokens, then
    mean over prompts (every prompt weighs the same whatever its response length)."""
    return response_ce_rows(logits, targets, rows, n_rows).mean(-1)


def full_response_ce(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    response_mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, ""]:
    """The same loss from full logits of one (unstacked) batch: the reference implementation."""
    check_response(response_mask)
    rm = response_mask[:, 1:]
    rows, pos = rm.nonzero(as_tuple=True)
    picked = logits[:, :-1][rows, pos]
    return response_ce(picked[None], tokens[:, 1:][rm], rows, tokens.shape[0])[0]


def melbo_rows(
    steered: Float[Tensor, "k batch pos d_model"],
    base: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    p: float = 2.0,
    q: float = 1.0,
) -> Float[Tensor, "k batch"]:
    """Per prompt: (sum over masked positions t of ||dh_t||^p)^(1/q)."""
    if p <= 0 or q <= 0:
        raise ConfigError(f"MELBO exponents must be positive (p={p}, q={q})")
    diff = (steered - base[None]).norm(dim=-1)  # [k, batch, pos]
    summed = (diff.pow(p) * mask.to(diff)[None]).sum(-1)
    # Subgradient-safe root: at an all-zero difference the gradient of x**(1/q) is infinite.
    return summed.clamp_min(1e-12).pow(1.0 / q)


def melbo_objective(
    steered: Float[Tensor, "k batch pos d_model"],
    base: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    p: float = 2.0,
    q: float = 1.0,
) -> Float[Tensor, "k"]:
    """MELBO divergence (Mack & Turner): mean over prompts of (sum_t ||dh_t||^p)^(1/q) over the
    masked positions of the target layer. Larger = the vector changes more downstream."""
    return melbo_rows(steered, base, mask, p, q).mean(-1)
