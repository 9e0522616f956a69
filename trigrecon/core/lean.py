"""A lean functional Llama block for the steered partial forward (`SteeredForward`).

TransformerLens's blocks are built for inspection: every call re-lays its weights out
(`W.T.contiguous()`, einops rearranges), expands grouped keys/values to every query head,
materialises the attention pattern and runs a hook point per activation. In the optimisers' inner
loop (a few blocks, thousands of steps, no hooks) that is most of the time on a CPU. `LeanBlocks`
runs the same computation from the same weights, read once:

- Q, K and V in one matrix multiply, RMSNorm's gain folded into that matrix (a copy of
  W_Q/W_K/W_V only; W_O and the MLP matrices are used in place, as views);
- rotary on queries and keys together;
- attention through `torch.nn.functional.scaled_dot_product_attention` with grouped-query heads
  regrouped (no key/value expansion): each key/value head meets its group of query heads as one
  longer query block;
- the shared prefix's keys/values (`SteeredForward`'s cache) rotated once, not on every step.

It covers the Llama family (RMSNorm, rotary, gated SiLU MLP, causal attention, no soft caps, no
Q/K norms, no parallel attention); `supported` says whether a model qualifies, and a model with
hooks attached always takes the TransformerLens path (the hooks must see their activations).
The plain TransformerLens forward stays the reference (tests/unit/test_steering_forward.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def supported(model: Any) -> bool:
    """Whether `model` (a HookedTransformer) is a plain Llama-style model `LeanBlocks` can run."""
    cfg = model.cfg
    checks = (
        cfg.normalization_type == "RMS", cfg.positional_embedding_type == "rotary",
        bool(cfg.gated_mlp), cfg.act_fn == "silu", cfg.original_architecture in (
            "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
        getattr(cfg, "attention_dir", "causal") == "causal",
        not getattr(cfg, "parallel_attn_mlp", False),
        not (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0,
        not getattr(cfg, "use_qk_norm", False), not getattr(cfg, "use_local_attn", False),
        not getattr(cfg, "use_attn_result", False), not getattr(cfg, "use_split_qkv_input", False),
        not getattr(cfg, "use_hook_mlp_in", False), not getattr(cfg, "use_attn_in", False),
        not getattr(cfg, "use_logn_attn", False), not getattr(cfg, "use_attention_sinks", False),
        not getattr(cfg, "use_dynamic_ntk_rope", False), getattr(cfg, "clip_qkv", None) is None,
        not getattr(cfg, "load_in_4bit", False), not getattr(cfg, "use_normalization_before_and_after", False),
        not getattr(cfg, "scale_attn_by_inverse_layer_idx", False),
    )
    return all(bool(c) for c in checks)


def unembed(model: Any, normed: Tensor) -> Tensor:
    """`model.unembed` without its per-call copy of W_U (TransformerLens lays the whole
    [d_vocab, d_model] matrix out anew on every call: 2 GB of traffic per call at 128k x 4096)."""
    u = model.unembed
    out = normed @ u.W_U
    b = u.b_U
    return out if b is None else out + b


def has_hooks(model: Any) -> bool:
    """Whether any TransformerLens hook point of `model` has a forward or backward hook."""
    return any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary ("rotate half", GPT-NeoX pairing) on the last dim; `sin` has its first half negated."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


@dataclass
class _Block:
    w_qkv: Tensor
    """[d_model, (n_heads + 2 n_kv) d_head], with ln1's gain folded in."""
    b_qkv: Tensor | None
    w_o: Tensor
    b_o: Tensor | None
    ln2: Tensor
    w_gate: Tensor
    w_in: Tensor
    b_in: Tensor | None
    w_out: Tensor
    b_out: Tensor | None
    prefix_k: Tensor | None = None
    """Rotated prefix keys [1, n_kv, prefix, d_head]."""
    prefix_v: Tensor | None = None


def _nonzero(b: Tensor) -> Tensor | None:
    return b.detach() if bool(b.detach().abs().max() > 0) else None


class LeanBlocks:
    """Blocks `start..stop-1` of a Llama-style HookedTransformer as a plain function of the residual.

    >>> run = LeanBlocks(model, start=2, stop=5, prefix_kv=entries)  # TL cache entries or None
    >>> out = run(resid)   # [batch, pos, d_model] -> the residual after block stop-1

    Positions of `resid` start after the cached prefix (`prefix_kv`: TransformerLens
    key/value-cache entries of every layer, keys unrotated as TL stores them). Weights are read at
    construction: build a new one after changing the model's weights.

    `compile=True` runs the blocks through `torch.compile` (inductor fuses the norms, rotary and
    gating around the matrix multiplies): it pays for itself after tens of steps of one input
    shape (each new shape compiles again, ~20 s on a 2-core CPU; a C++ compiler is needed on
    CPU). `decode` never compiles (its shapes change every token).
    """

    def __init__(self, model: Any, start: int, stop: int, prefix_kv: list[Any] | None = None,
                 compile: bool = False) -> None:
        cfg = model.cfg
        self.eps, self.n_heads, self.d_head = float(cfg.eps), int(cfg.n_heads), int(cfg.d_head)
        self.n_kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        self.group = self.n_heads // self.n_kv
        self.rot = int(cfg.rotary_dim or cfg.d_head)
        attn0 = model.blocks[start].attn if stop > start else model.blocks[0].attn
        self.scale = 1.0 / float(attn0.attn_scale)
        self._cos_full, self._sin_full = attn0.rotary_cos.detach(), attn0.rotary_sin.detach()
        self.prefix = int(prefix_kv[0].past_keys.shape[1]) if prefix_kv else 0
        self.blocks = [self._read(model.blocks[i], prefix_kv[i] if prefix_kv else None)
                       for i in range(start, stop)]
        self._rope: dict[int, tuple[Tensor, Tensor]] = {}
        self._masks: dict[tuple[int, int], Tensor] = {}
        self._blocks_fn = torch.compile(self._run_blocks) if compile else self._run_blocks

    def _tables(self, lo: int, n: int) -> tuple[Tensor, Tensor]:
        """cos, sin (first half negated) for positions lo..lo+n-1, padded to d_head: [n, 1, d_head]."""
        return self._tables_at(torch.arange(lo, lo + n, device=self._cos_full.device))

    def _tables_at(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin for integer positions of any shape [...]: [..., 1, d_head]."""
        cos, sin = self._cos_full[pos, : self.rot], self._sin_full[pos, : self.rot]
        half = self.rot // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        if self.rot < self.d_head:  # partial rotary: the rest passes through
            pad = self.d_head - self.rot
            cos = torch.cat([cos, cos.new_ones(*cos.shape[:-1], pad)], dim=-1)
            sin = torch.cat([sin, sin.new_zeros(*sin.shape[:-1], pad)], dim=-1)
        return cos.unsqueeze(-2), sin.unsqueeze(-2)

    def _read(self, block: Any, entry: Any) -> _Block:
        attn, mlp = block.attn, block.mlp
        d = attn.W_Q.shape[1]
        wk = getattr(attn, "_W_K", attn.W_K)
        wv = getattr(attn, "_W_V", attn.W_V)
        bk = getattr(attn, "_b_K", attn.b_K)
        bv = getattr(attn, "_b_V", attn.b_V)
        w = torch.cat([m.detach().permute(1, 0, 2).reshape(d, -1) for m in (attn.W_Q, wk, wv)], 1)
        w = (block.ln1.w.detach()[:, None] * w).contiguous()
        b = _nonzero(torch.cat([attn.b_Q.detach().reshape(-1), bk.detach().reshape(-1),
                                bv.detach().reshape(-1)]))
        pk = pv = None
        if entry is not None:
            cos, sin = self._tables(0, self.prefix)
            keys = entry.past_keys.detach()[:1]
            pk = _rotate(keys, cos[None], sin[None]).transpose(1, 2).contiguous()
            pv = entry.past_values.detach()[:1].transpose(1, 2).contiguous()
        return _Block(w, b, attn.W_O.detach().reshape(-1, d), _nonzero(attn.b_O),
                      block.ln2.w.detach(), mlp.W_gate.detach(), mlp.W_in.detach(),
                      _nonzero(mlp.b_in), mlp.W_out.detach(), _nonzero(mlp.b_out), pk, pv)

    def _mask(self, n: int, past: int) -> Tensor:
        """Causal mask of the regrouped queries [group * n, past + n] (True: attend)."""
        if (n, past) not in self._masks:
            q = torch.arange(n, device=self._cos_full.device)
            k = torch.arange(past + n, device=q.device)
            m = k[None, :] <= (q[:, None] + past)
            self._masks[(n, past)] = m.repeat(self.group, 1)
        return self._masks[(n, past)]

    def _norm(self, x: Tensor) -> Tensor:
        """RMSNorm without its gain (in float32 for half-precision inputs, as TransformerLens)."""
        if x.dtype in (torch.float32, torch.float64):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _attention(self, b: _Block, x: Tensor, cos: Tensor, sin: Tensor,
                   past: tuple[Tensor, Tensor] | None, mask: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """(attention output, keys, values incl. `past`) of positions after `past`'s."""
        bsz, n, _ = x.shape
        h, kv, dh, g = self.n_heads, self.n_kv, self.d_head, self.group
        qkv = F.linear(self._norm(x), b.w_qkv.T, b.b_qkv)
        qk = _rotate(qkv[..., : (h + kv) * dh].view(bsz, n, h + kv, dh), cos, sin)
        # queries regrouped by their key/value head: [bsz, kv, group * n, d_head]
        q = qk[:, :, :h].reshape(bsz, n, kv, g, dh).permute(0, 2, 3, 1, 4).reshape(bsz, kv, g * n, dh)
        k = qk[:, :, h:].transpose(1, 2)
        v = qkv[..., (h + kv) * dh:].view(bsz, n, kv, dh).transpose(1, 2)
        n_past = 0
        if past is not None:
            n_past = past[0].shape[2]
            k = torch.cat([past[0].expand(bsz, -1, -1, -1), k], dim=2)
            v = torch.cat([past[1].expand(bsz, -1, -1, -1), v], dim=2)
        if mask is not None:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        elif n == 1:  # one new position sees every key
            z = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif g == 1 and not n_past:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(n, n_past),
                                               scale=self.scale)
        z = z.view(bsz, kv, g, n, dh).permute(0, 3, 1, 2, 4).reshape(bsz, n, h * dh)
        return F.linear(z, b.w_o.T, b.b_o), k, v

    def _mlp(self, b: _Block, x: Tensor) -> Tensor:
        hn = self._norm(x) * b.ln2
        act = F.silu(hn @ b.w_gate) * (hn @ b.w_in)
        if b.b_in is not None:
            act = act + b.b_in
        out = act @ b.w_out
        return out if b.b_out is None else out + b.b_out

    def __call__(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        n = x.shape[1]
        if n not in self._rope:
            self._rope[n] = self._tables(self.prefix, n)
        cos, sin = self._rope[n]
        if n > 1:
            self._mask(n, self.prefix)  # cached before the blocks run (no recompile for it)
        return self._blocks_fn(x, cos, sin)

    def _run_blocks(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        for b in self.blocks:
            past = None if b.prefix_k is None or b.prefix_v is None else (b.prefix_k, b.prefix_v)
            x = x + self._attention(b, x, cos, sin, past)[0]
            x = x + self._mlp(b, x)
        return x

    def decode(self, x: Float[Tensor, "batch pos d_model"], cache: list[tuple[Tensor, Tensor] | None],
               offset: int, pads: Tensor | None = None) -> Float[Tensor, "batch pos d_model"]:
        """Run positions offset..offset+pos-1 with a growing key/value cache (generation):
        `cache[i]` holds block i's rotated keys and values of the earlier positions (None at the
        start) and is replaced by the extended ones. Built without a prefix.

        Left-padded rows: `pads[r]` leading positions of row r are padding (never attended to;
        row r's positions count from its first real token)."""
        n = x.shape[1]
        mask = None
        if pads is None:
            cos, sin = self._tables(offset, n)
        else:
            idx = torch.arange(offset, offset + n, device=x.device)
            cos, sin = self._tables_at((idx[None] - pads[:, None]).clamp_min(0))
            keys = torch.arange(offset + n, device=x.device)
            ok = (keys[None, None] <= idx[None, :, None]) & (keys[None, None] >= pads[:, None, None])
            ok |= keys[None, None] == idx[None, :, None]  # a pad query sees itself (no NaN)
            mask = ok.repeat(1, self.group, 1)[:, None]  # [rows, 1, group * n, keys]
        for i, b in enumerate(self.blocks):
            h, k, v = self._attention(b, x, cos, sin, cache[i], mask)
            cache[i] = (k, v)
            x = x + h
            x = x + self._mlp(b, x)
        return x
