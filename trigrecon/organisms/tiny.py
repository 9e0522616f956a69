"""Tiny random models and SAEs for tests, examples and benchmark fallbacks (no training, no hub).

The tokenizer is the organisms' word-level chat tokenizer, so chat masks are real.
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from trigrecon.core.model import HookedChatModel


def tiny_transformer(d_vocab: int, d_model: int = 64, n_layers: int = 2, n_ctx: int = 128,
                     seed: int = 0, name: str = "tiny") -> HookedTransformer:
    """A random Llama-style (RMSNorm, rotary, gated SiLU MLP) HookedTransformer, in eval mode."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=4, d_head=d_model // 4, d_mlp=2 * d_model,
        n_ctx=n_ctx, d_vocab=d_vocab, act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", gated_mlp=True, final_rms=True, seed=seed,
        model_name=name, original_architecture="LlamaForCausalLM")
    return HookedTransformer(cfg).eval()


def tiny_chat_model(d_model: int = 64, n_layers: int = 4, seed: int = 0) -> HookedChatModel:
    """A random Llama-style HookedTransformer with the organisms' chat tokenizer; frozen."""
    from trigrecon.organisms.train import build_tokenizer

    tok = build_tokenizer()
    model = tiny_transformer(len(tok), d_model, n_layers, seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return HookedChatModel(model, tok, f"tiny-{d_model}x{n_layers}")


def tiny_sae(hm: Any, layer: int = 1, d_sae: int = 256, seed: int = 0) -> Any:
    """A random StandardSAE on `hm`'s residual stream at `layer` (unit decoder rows, tied encoder)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    gen = torch.Generator().manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=hm.d_model, d_sae=d_sae))
    sae.cfg.metadata.hook_name = hm.hook_name(layer)
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(d_sae, hm.d_model, generator=gen), dim=-1)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae.eval()
