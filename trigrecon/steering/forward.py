"""The steered forward pass every optimiser shares.

Steering adds a vector to the residual stream at a *source* layer, on user-content tokens only.
Everything before the source layer is unaffected by the vector, so `SteeredForward` runs the
model up to the source layer ONCE per batch of prompts, caches that residual stream, and on each
optimisation step runs only blocks `source+1 .. target` (an unsupervised loss on target-layer
activations) or `source+1 .. end` (a cross-entropy loss, unembedding only response positions).
K vectors are evaluated in one pass by stacking the cached batch K times (leading `k` dim).

The shared prefix is not recomputed: the positions before the first user token (the chat
template's header, e.g. Llama-3.1's ~30-token system block) are the same in every prompt and
untouched by steering, so their keys and values are computed once and every step runs only the
positions after them.
Padding is not computed either: prompts are grouped into a few length buckets, each trimmed to its
own longest prompt (buckets of equal length are one bucket). Batches are right-padded
(`ChatBatch`), so under causal attention real tokens never see padding and the partial runs need
no attention mask.

The blocks run through `lean.LeanBlocks` (a functional Llama block on the model's own weights:
fused QKV, SDPA attention with grouped heads, no per-call weight copies; ~1.2-1.35x the
HookedTransformer's blocks per step on a CPU, where both are matmul-bound) whenever the model
is a plain Llama-style one and no hook is attached to it (hooks must see their activations:
then, and with `lean=False`, the HookedTransformer runs the blocks).

Layer convention: "layer L" is the residual stream at `hm.hook_name(L)` (TransformerLens
`blocks.L.hook_resid_post`, i.e. the output of block L; `hook_resid_pre` is also understood).
`full_forward_with_vector` is the plain reference: a full forward from the tokens with a hook.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from trigrecon.core import lean as _lean
from trigrecon.core.chat import ChatBatch
from trigrecon.core.errors import ConfigError
from trigrecon.steering.losses import check_response, melbo_rows, response_ce_rows


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


def length_buckets(lengths: list[int], max_buckets: int) -> list[list[int]]:
    """Row indices grouped by length (sorted, equal-count groups) to avoid computing padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = max(1, min(max_buckets, len(order)))
    bounds = [round(i * len(order) / n) for i in range(n + 1)]
    groups = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    merged: list[list[int]] = []
    for g in groups:  # sorted: groups of one length are adjacent; running them apart gains nothing
        if merged and max(lengths[i] for i in merged[-1]) == max(lengths[i] for i in g):
            merged[-1] += g
        else:
            merged.append(g)
    return merged


def shared_prefix(batch: ChatBatch) -> int:
    """Number of leading positions with the same token in every row and no user content."""
    um = batch.user_mask
    if not bool(um.any(1).all()):
        return 0
    first = int(um.float().argmax(1).min())
    head = batch.tokens[:, :first]
    return first if bool((head == head[:1]).all()) else 0


def kv_entries(entries: list[Any], rows: int) -> list[Any]:
    """Frozen per-layer cache entries holding the prefix's keys/values, broadcast to `rows`."""
    from transformer_lens import TransformerLensKeyValueCacheEntry as Entry

    return [Entry(e.past_keys.expand(rows, -1, -1, -1), e.past_values.expand(rows, -1, -1, -1),
                  frozen=True) for e in entries]


@dataclass
class Bucket:
    """Prompts of similar length, trimmed to the longest of them, with their cached residual.

    Positions count from the end of the shared prefix (`SteeredForward.prefix`)."""

    rows: Int[Tensor, "rows"]
    length: int
    """Longest prompt in the bucket, prefix included."""
    resid: Float[Tensor, "rows pos d_model"]
    user: Float[Tensor, "rows pos 1"]
    real: Bool[Tensor, "rows pos"]
    resp_rows: Int[Tensor, "n"]
    resp_pos: Int[Tensor, "n"]
    base: Tensor | None = None
    """Unsteered target-layer residual (filled on first use)."""


class SteeredForward:
    """Cached, partial steered forward for one batch of prompts.

    >>> fwd = SteeredForward(hm, batch, source=1, target=3)
    >>> acts = fwd.target_resid(vectors)       # [k, batch, pos, d_model]
    >>> obj = fwd.melbo_objective(vectors)     # [k], without assembling activations
    >>> logits = fwd.response_logits(vectors)  # [k, n_resp, d_vocab] (CE positions only)
    """

    def __init__(self, hm: Any, batch: ChatBatch, source: int, target: int | None = None,
                 max_buckets: int = 4, cache_prefix: bool = True, lean: bool | None = None,
                 compile: bool = False) -> None:
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
        if lean and not _lean.supported(model):
            raise ConfigError("lean=True needs a plain Llama-style model (see steering/lean.py)")
        self.lean = _lean.supported(model) if lean is None else bool(lean)
        if compile:
            _check_compile(self.lean, next(model.parameters()).device)
        self.compile = compile
        self._lean_runs: dict[int, _lean.LeanBlocks] = {}
        self.batch = batch.to(next(model.parameters()).device)
        am = self.batch.attention_mask
        lengths = am.sum(1)
        if not bool((am == (torch.arange(am.shape[1], device=am.device) < lengths[:, None])).all()):
            raise ConfigError("SteeredForward needs a right-padded batch (ChatBatch is)")
        with torch.no_grad():
            self.resid: Float[Tensor, "batch pos d_model"] = model(
                self.batch.tokens, attention_mask=am.long(), stop_at_layer=stop).detach()
        self.prefix = shared_prefix(self.batch) if cache_prefix and prefix_cacheable(model) else 0
        self._prefix_kv = self._prefix_keys_values() if self.prefix else []
        self._prefix_out: dict[int | None, Tensor] = {}
        rm = self.batch.response_mask[:, 1:]
        self.resp_rows, self.resp_pos = rm.nonzero(as_tuple=True)
        self.resp_targets = self.batch.tokens[:, 1:][rm]
        self.buckets = [self._bucket(rows, int(lengths[rows].max()), rm)
                        for rows in length_buckets(lengths.tolist(), max_buckets)]
        self.inverse = torch.argsort(torch.cat([b.rows for b in self.buckets]))
        flat = torch.cat([b.rows[b.resp_rows] * rm.shape[1] + b.resp_pos for b in self.buckets])
        self.resp_perm = torch.argsort(flat)  # bucket order -> row-major (nonzero) order

    def _bucket(self, rows: list[int], length: int, rm: Tensor) -> Bucket:
        idx, a = torch.tensor(rows, device=self.resid.device), self.prefix
        r, p = rm[idx].nonzero(as_tuple=True)
        user = self.batch.user_mask[idx, a:length].to(self.resid.dtype)[..., None]
        return Bucket(idx, length, self.resid[idx, a:length], user,
                      self.batch.attention_mask[idx, a:length], r, p - a)

    def _prefix_keys_values(self) -> list[Any]:
        """Keys/values of the shared prefix at every layer, from one unsteered run of row 0."""
        from transformer_lens import TransformerLensKeyValueCache

        model = self.hm.model
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, self.resid.device, 1)
        tokens = self.batch.tokens[:1, : self.prefix]
        with torch.no_grad():  # explicit mask: TL would mask a trailing token with the pad id
            model(tokens, attention_mask=torch.ones_like(tokens), past_kv_cache=cache)
        return list(cache.entries)

    def _prefix_output(self, stop: int | None) -> Tensor:
        """Unsteered output of blocks start..stop on the prefix: [prefix, d_out]."""
        if stop not in self._prefix_out:
            with torch.no_grad():
                self._prefix_out[stop] = self.hm.model(
                    self.resid[:1, : self.prefix], start_at_layer=self.start,
                    stop_at_layer=stop)[0].detach()
        return self._prefix_out[stop]

    @property
    def d_model(self) -> int:
        return int(self.resid.shape[-1])

    def _check(self, vectors: Tensor) -> Tensor:
        if vectors.ndim != 2 or vectors.shape[-1] != self.d_model:
            raise ConfigError(f"vectors must be [k, {self.d_model}], got {tuple(vectors.shape)}")
        return vectors.to(self.resid)

    def _run(self, b: Bucket, steered: Float[Tensor, "k rows pos d_model"], stop: int | None
             ) -> Tensor:
        """Blocks start..stop on a bucket's steered residual after the prefix: [k, rows, pos, d]."""
        k, n = steered.shape[0], steered.shape[2]
        x = steered.reshape(-1, n, self.d_model)
        model = self.hm.model
        if self.lean and not _lean.has_hooks(model):
            out = self._lean_blocks(stop)(x)
            if stop is None:
                out = _logits(model, model.ln_final(out))
        else:
            kv = kv_entries(self._prefix_kv, x.shape[0]) if self.prefix else None
            out = model(x, start_at_layer=self.start, stop_at_layer=stop, past_kv_cache=kv)
        return out.reshape(k, len(b.rows), n, out.shape[-1])

    def _lean_blocks(self, stop: int | None) -> _lean.LeanBlocks:
        """Blocks start..stop-1 as `LeanBlocks` (built once per stop, with the prefix cache)."""
        end = self.hm.model.cfg.n_layers if stop is None else stop
        if end not in self._lean_runs:
            self._lean_runs[end] = _lean.LeanBlocks(self.hm.model, self.start, end,
                                                    self._prefix_kv or None, self.compile)
        return self._lean_runs[end]

    def _steer(self, b: Bucket, vectors: Tensor) -> Tensor:
        return b.resid[None] + b.user[None] * vectors[:, None, None, :]

    def _assemble(self, outs: list[Tensor], stop: int | None) -> Tensor:
        """Bucket outputs back into [k, batch, pos, d] (zeros on padding), original row order."""
        if self.prefix:
            pre = self._prefix_output(stop)
            outs = [torch.cat([pre.expand(*o.shape[:2], -1, -1), o], dim=2) for o in outs]
        width = self.resid.shape[1]
        padded = [F.pad(o, (0, 0, 0, width - o.shape[2])) for o in outs]
        return torch.cat(padded, dim=1)[:, self.inverse]

    def _target_stop(self) -> int:
        if self.target_stop is None:
            raise ConfigError("SteeredForward was built without a target layer")
        return self.target_stop

    def target_resid(self, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k batch pos d_model"]:
        """Residual stream at the target layer, running only blocks source+1..target."""
        v, stop = self._check(vectors), self._target_stop()
        return self._assemble([self._run(b, self._steer(b, v), stop) for b in self.buckets], stop)

    def base_target_resid(self) -> Float[Tensor, "batch pos d_model"]:
        """The unsteered target-layer residual (computed once; zeros on padding)."""
        return self._assemble([self._base(b)[None] for b in self.buckets], self._target_stop())[0]

    def _base(self, b: Bucket) -> Tensor:
        if b.base is None:
            with torch.no_grad():
                b.base = self._run(b, b.resid[None], self._target_stop())[0].detach()
        return b.base

    def melbo_objective(self, vectors: Float[Tensor, "k d_model"], p: float = 2.0,
                        q: float = 1.0) -> Float[Tensor, "k"]:
        """`losses.melbo_objective` over the real tokens, bucket by bucket (no re-assembly)."""
        v, stop = self._check(vectors), self._target_stop()
        rows = [melbo_rows(self._run(b, self._steer(b, v), stop), self._base(b), b.real, p, q)
                for b in self.buckets]
        return torch.cat(rows, dim=1).mean(-1)

    def logits(self, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k batch pos d_vocab"]:
        """Full logits of the steered batch (zeros on padding)."""
        v = self._check(vectors)
        return self._assemble([self._run(b, self._steer(b, v), None) for b in self.buckets], None)

    def response_logits(self, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k n_resp d_vocab"]:
        """Logits only where they predict a response token (unembedding only those positions)."""
        v = self._check(vectors)
        return self._unembed_responses([self._steer(b, v) for b in self.buckets])

    def response_logits_from(self, steered: Float[Tensor, "k batch pos d_model"]) -> Tensor:
        """Response-position logits from (steered) source-layer residuals [k, batch, pos, d].

        The first `self.prefix` positions are read from the prefix cache, not from `steered`."""
        a = self.prefix
        return self._unembed_responses([steered[:, b.rows, a: b.length] for b in self.buckets])

    def _unembed_responses(self, steered: list[Tensor]) -> Tensor:
        model = self.hm.model
        picked = torch.cat([self._run(b, s, model.cfg.n_layers)[:, b.resp_rows, b.resp_pos]
                            for b, s in zip(self.buckets, steered, strict=True)], dim=1)
        picked = picked[:, self.resp_perm]
        if model.cfg.normalization_type is not None:
            picked = model.ln_final(picked)
        return _logits(model, picked)

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


def _logits(model: Any, normed: Tensor) -> Tensor:
    """Unembedding (and the output soft cap, if any) of final-normed residuals."""
    logits = _lean.unembed(model, normed) if not _lean.has_hooks(model) else model.unembed(normed)
    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def prefix_cacheable(model: Any) -> bool:
    """Whether this architecture runs correctly from a key/value cache after start_at_layer."""
    cfg = model.cfg
    return cfg.positional_embedding_type in ("standard", "rotary") and \
        getattr(cfg, "attention_dir", "causal") == "causal"


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


def _check_compile(lean: bool, device: torch.device) -> None:
    """compile=True needs the lean blocks and, on CPU, a C++ compiler (inductor's backend)."""
    if not lean:
        raise ConfigError("compile=True needs the lean blocks (a plain Llama-style model, "
                          "lean not False); set compile=False")
    cxx = os.environ.get("CXX", "g++")
    if device.type == "cpu" and shutil.which(cxx) is None:
        raise ConfigError(f"compile=True on CPU needs a C++ compiler ({cxx!r} not found): "
                          "install one (e.g. apt install g++) or set compile=False")
