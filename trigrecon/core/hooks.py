"""Steering hooks: add vector(s) to the residual stream at masked positions, and never leak hooks.

Positions: a hook sees `pos` positions starting at absolute position `position_offset()`. That is
0 for a plain forward; during KV-cached decoding `core.generate` sets it to the number of cached
tokens, so a [batch, prompt_len] mask lines up with the single new position (past the mask's end
the mask reads as False: generated tokens are not steered unless the mask covers them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

from trigrecon.core.errors import ConfigError

HookFn = Callable[..., Tensor]
_OFFSET: ContextVar[int] = ContextVar("trigrecon_position_offset", default=0)


def position_offset() -> int:
    """Absolute position of the first position a hook sees in the current forward pass."""
    return _OFFSET.get()


@contextmanager
def at_position(offset: int) -> Iterator[None]:
    """Declare that the forward passes inside start at absolute position `offset`."""
    token = _OFFSET.set(int(offset))
    try:
        yield
    finally:
        _OFFSET.reset(token)


def window(mask: Bool[Tensor, "batch mask_pos"], start: int, pos: int) -> Bool[Tensor, "batch pos"]:
    """mask[:, start:start+pos], padded with False where the mask is too short."""
    out = torch.zeros(mask.shape[0], pos, dtype=torch.bool, device=mask.device)
    part = mask[:, start : start + pos]
    out[:, : part.shape[1]] = part
    return out


def add_to_resid(
    vector: Float[Tensor, "... d_model"],
    mask: Bool[Tensor, "batch pos"],
) -> HookFn:
    """A TL hook adding `vector` ([d_model], or one per row: [batch, d_model]) where `mask` is True.

    Differentiable in `vector` (the optimisers backpropagate through it).
    """
    if vector.ndim not in (1, 2):
        raise ConfigError(f"steering vector must be [d_model] or [batch, d_model], "
                          f"got shape {tuple(vector.shape)}")
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ConfigError(f"steering mask must be a bool [batch, pos] tensor, got "
                          f"{mask.dtype} {tuple(mask.shape)}")
    if vector.ndim == 2 and vector.shape[0] != mask.shape[0]:
        raise ConfigError(f"{vector.shape[0]} steering vectors for a mask of {mask.shape[0]} rows")

    def hook(resid: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
        if resid.shape[-1] != vector.shape[-1]:
            raise ConfigError(f"steering vector has d_model {vector.shape[-1]}, "
                              f"the residual stream has {resid.shape[-1]}")
        if resid.shape[0] != mask.shape[0]:
            raise ConfigError(f"steering mask has {mask.shape[0]} rows, the batch has "
                              f"{resid.shape[0]}")
        m = window(mask.to(resid.device), position_offset(), resid.shape[1])
        vec = vector.to(device=resid.device, dtype=resid.dtype)
        vec = vec[:, None, :] if vec.ndim == 2 else vec
        return resid + m[..., None].to(resid.dtype) * vec

    return hook


def _hooked(model: Any) -> HookedTransformer:
    return model if isinstance(model, HookedTransformer) else model.model


def resid_hook_name(model: Any, layer: int) -> str:
    """`blocks.{layer}.hook_resid_post` after checking the layer (HookedChatModel or TL model)."""
    if hasattr(model, "hook_name"):
        return str(model.hook_name(layer))
    n = _hooked(model).cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ConfigError(f"steering layer {layer!r} is out of range: the model has layers "
                          f"0..{n - 1}")
    return f"blocks.{layer}.hook_resid_post"


@contextmanager
def steering(
    model: Any,
    layer: int,
    vector: Float[Tensor, "... d_model"],
    mask: Bool[Tensor, "batch pos"],
) -> Iterator[HookedTransformer]:
    """Add `vector` at `mask` to the residual stream after block `layer` inside the block.

    `model` is a HookedChatModel or a HookedTransformer; the hook comes off on exit, also on errors.
    >>> with steering(hm, 3, v, batch.user_mask):
    ...     logits = hm.model(batch.tokens)
    """
    ht = _hooked(model)
    if vector.shape[-1] != ht.cfg.d_model:
        raise ConfigError(f"steering vector has d_model {vector.shape[-1]}, the model has "
                          f"{ht.cfg.d_model}")
    fwd: list[tuple[str | Callable, Callable]] = [
        (resid_hook_name(model, layer), add_to_resid(vector, mask))]
    with ht.hooks(fwd_hooks=fwd):
        yield ht


def attached_hooks(model: Any) -> list[str]:
    """Names of modules that still carry forward/backward (pre-)hooks."""
    found = []
    for name, module in _hooked(model).named_modules():
        handles = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                   getattr(module, "_backward_pre_hooks", {}))
        if any(len(h) for h in handles) or getattr(module, "fwd_hooks", None) or getattr(
                module, "bwd_hooks", None):
            found.append(name or "<root>")
    return found


def assert_no_hooks(model: Any) -> None:
    """Test helper: raise AssertionError naming every module that still has a hook attached."""
    left = attached_hooks(model)
    if left:
        raise AssertionError(f"hooks left attached on: {', '.join(left)}")
