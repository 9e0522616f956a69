"""Reading a steering vector: nearest SAE latents (with labels) and steered behaviour.

Two latent views of a residual vector v:
- `nearest_latents`: cosine between v and every decoder row (what the vector points at);
- `encoded_latents`: the SAE encoding of v. A bare vector is off the SAE's input distribution,
  so with reference activations h (user-token residuals of real prompts) the encoding is
  mean(encode(h + v) - encode(h)): which latents the vector switches on in context.
Behaviour: greedy generations on held-out benign prompts with v added on user tokens, and the
steered action rate under a judge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from trigrecon.core.chat import ChatBatch
from trigrecon.core.hooks import add_to_resid
from trigrecon.core.judges import Judge, action_rate


@dataclass
class LatentHit:
    """One SAE latent in a ranking."""

    latent: int
    score: float
    label: str = ""


def label_of(labels: Any, latent: int) -> str:
    """The latent's label, or '' without a label set."""
    return str(labels.get(latent)) if labels is not None else ""


def rank_latents(scores: Float[Tensor, "d_sae"], k: int = 10, labels: Any = None,
                 descending: bool = True) -> list[LatentHit]:
    """The k latents with the largest (or, with descending=False, the most negative) scores."""
    k = min(k, scores.numel())
    vals, idx = torch.topk(scores.detach().float(), k, largest=descending)
    return [LatentHit(int(i), float(v), label_of(labels, int(i))) for v, i in zip(vals, idx, strict=True)]


def decoder_cosine(vector: Float[Tensor, "d_model"], W_dec: Float[Tensor, "d_sae d_model"]
                   ) -> Float[Tensor, "d_sae"]:
    W = W_dec.detach()
    return torch.nn.functional.cosine_similarity(W, vector.detach().to(W)[None], dim=-1)


def nearest_latents(vector: Float[Tensor, "d_model"], sae: Any, labels: Any = None,
                    k: int = 10) -> list[LatentHit]:
    """Latents whose decoder rows have the largest cosine with the vector."""
    return rank_latents(decoder_cosine(vector, sae.W_dec), k, labels)


@torch.no_grad()
def vector_encoding(vector: Float[Tensor, "d_model"], sae: Any,
                    base: Float[Tensor, "n d_model"] | None = None) -> Float[Tensor, "d_sae"]:
    """SAE encoding of the vector: in context (mean encode(h+v) - encode(h)) if `base` is given."""
    v = vector.detach().to(sae.W_dec)
    if base is None:
        return sae.encode(v[None])[0]
    base = base.to(v)
    return (sae.encode(base + v) - sae.encode(base)).mean(0)


def encoded_latents(vector: Float[Tensor, "d_model"], sae: Any, labels: Any = None, k: int = 10,
                    base: Float[Tensor, "n d_model"] | None = None) -> list[LatentHit]:
    return rank_latents(vector_encoding(vector, sae, base), k, labels)


def hook_factory(hm: Any, layer: int, vector: Float[Tensor, "d_model"] | None
                 ) -> Callable[[ChatBatch], list[tuple[str, Callable[..., Tensor]]]] | None:
    """A `generate` hook factory adding `vector` on user tokens at `layer` (None: no steering)."""
    if vector is None:
        return None
    name = hm.hook_name(layer)
    vec = vector.detach()

    def factory(batch: ChatBatch) -> list[tuple[str, Callable[..., Tensor]]]:
        return [(name, add_to_resid(vec, batch.user_mask))]

    return factory


def steered_generations(hm: Any, prompts: Sequence[str], layer: int,
                        vector: Float[Tensor, "d_model"] | None, max_new_tokens: int = 24
                        ) -> list[str]:
    """Greedy generations with the vector added on user tokens (vector=None: unsteered)."""
    from trigrecon.core.generate import generate

    return generate(hm, list(prompts), max_new_tokens=max_new_tokens,
                    hook_factory=hook_factory(hm, layer, vector))


def steered_action_rate(hm: Any, prompts: Sequence[str], layer: int,
                        vector: Float[Tensor, "d_model"] | None, judge: Judge,
                        max_new_tokens: int = 24) -> tuple[float, list[str]]:
    """(fraction of steered generations the judge counts as the action, the generations)."""
    gens = steered_generations(hm, prompts, layer, vector, max_new_tokens)
    return action_rate(gens, judge), gens


@dataclass
class VectorReadout:
    """What one steering vector does and which latents it resembles."""

    index: int
    norm: float
    loss: float
    """Final main loss term (CE for supervised methods, the MELBO objective otherwise)."""
    nearest: list[LatentHit] = field(default_factory=list)
    """Cosine to decoder rows."""
    encoded: list[LatentHit] = field(default_factory=list)
    """SAE encoding of the vector (in context when reference activations were given)."""
    code: list[LatentHit] = field(default_factory=list)
    """Largest entries of the latent code (SAE-space methods only)."""
    effect: list[LatentHit] = field(default_factory=list)
    """Supervised SAE-space methods: the code's largest latents ranked by how much the response
    cross-entropy rises when each alone is removed from the vector (score: that rise)."""
    action_rate: float | None = None
    generations: list[str] = field(default_factory=list)
    """A few steered generations on held-out prompts."""


def read_vector(index: int, vector: Float[Tensor, "d_model"], loss: float, *, sae: Any = None,
                labels: Any = None, code: Tensor | None = None, base: Tensor | None = None,
                k: int = 10) -> VectorReadout:
    """Latent views of one vector (behaviour is filled in by `add_behaviour`)."""
    r = VectorReadout(index, float(vector.norm()), float(loss))
    if sae is not None:
        r.nearest = nearest_latents(vector, sae, labels, k)
        r.encoded = encoded_latents(vector, sae, labels, k, base)
    if code is not None:
        r.code = rank_latents(code, k, labels)
    return r


def add_behaviour(r: VectorReadout, hm: Any, prompts: Sequence[str], layer: int,
                  vector: Tensor, judge: Judge | None, max_new_tokens: int = 24,
                  n_keep: int = 4) -> VectorReadout:
    """Steered generations (and the action rate when a judge is given) on held-out prompts."""
    gens = steered_generations(hm, prompts, layer, vector, max_new_tokens)
    r.generations = gens[:n_keep]
    r.action_rate = action_rate(gens, judge) if judge is not None else None
    return r
