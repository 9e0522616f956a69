"""Words in context: residuals of vocabulary words inserted into benign prompts.

Two uses: the SAE activations of each word (a latent's top-activating words, in `verify`), and
a readout of a steering vector that needs no SAE: the words whose residual (centred over the
vocabulary) points most along the vector. The second still works when an SAE has no latent for
the trigger's concept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from trigrecon.core.errors import ConfigError
from trigrecon.steering.forward import resid_bounds

Inserter = Callable[[str, Sequence[str]], str]


def default_insert(prompt: str, words: Sequence[str]) -> str:
    """'<prompt> it is about w1 and w2 .'"""
    return f"{prompt} it is about {' and '.join(words)} ."


@dataclass
class WordHit:
    word: str
    score: float


def default_vocabulary(tokenizer: Any, limit: int = 20000) -> list[str]:
    """Alphabetic whole-word tokens (2+ letters) of the tokenizer, in id order."""
    words: dict[str, None] = {}
    special = set(getattr(tokenizer, "all_special_tokens", []))
    for tok, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if tok in special:
            continue
        w = tok.lstrip("Ġ▁ ").lower()
        if len(w) >= 2 and w.isascii() and w.isalpha():
            words.setdefault(w, None)
        if len(words) >= limit:
            break
    return list(words)


def word_position(tokenizer: Any, tokens: list[int], word: str) -> int | None:
    """Last token of the last occurrence of the word (with or without a leading space)."""
    for variant in (" " + word, word):
        ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
        n = len(ids)
        for s in range(len(tokens) - n, -1, -1):
            if n and tokens[s:s + n] == ids:
                return s + n - 1
    return None


@torch.no_grad()
def word_residuals(hm: Any, words: Sequence[str], contexts: Sequence[str], layer: int,
                   insert: Inserter = default_insert, batch_size: int = 256
                   ) -> tuple[Float[Tensor, "n_words n_ctx d_model"], Bool[Tensor, "n_words n_ctx"]]:
    """Residual at `layer` on each word inserted into each context, and where it was found."""
    if not words or not contexts:
        raise ConfigError("word_residuals needs words and contexts")
    stop, _ = resid_bounds(hm, layer)
    model = hm.model
    dev = next(model.parameters()).device
    jobs = [(wi, ci, insert(c, [w])) for wi, w in enumerate(words) for ci, c in enumerate(contexts)]
    out = torch.zeros(len(words), len(contexts), hm.d_model)
    found = torch.zeros(len(words), len(contexts), dtype=torch.bool)
    for start in tqdm(range(0, len(jobs), batch_size), desc="word residuals", leave=False):
        chunk = jobs[start:start + batch_size]
        batch = hm.batch([t for _, _, t in chunk])
        resid = model(batch.tokens.to(dev), attention_mask=batch.attention_mask.long().to(dev),
                      stop_at_layer=stop)
        for row, (wi, ci, _) in enumerate(chunk):
            toks = batch.tokens[row, : int(batch.attention_mask[row].sum())].tolist()
            pos = word_position(hm.tokenizer, toks, words[wi])
            if pos is not None:
                out[wi, ci], found[wi, ci] = resid[row, pos].float().cpu(), True
    return out, found


def nearest_words(vector: Float[Tensor, "d_model"], resid: Float[Tensor, "n_words n_ctx d_model"],
                  found: Bool[Tensor, "n_words n_ctx"], words: Sequence[str], k: int = 10
                  ) -> list[WordHit]:
    """Words whose mean in-context residual, centred over the vocabulary, has the largest cosine
    with the vector (what adding the vector makes the prompt 'look like')."""
    n = found.sum(1, keepdim=True).clamp_min(1)
    mean = (resid * found[..., None]).sum(1) / n
    ok = found.any(1)
    centred = mean[ok] - mean[ok].mean(0)
    cos = torch.nn.functional.cosine_similarity(centred, vector.detach().float().cpu()[None], -1)
    kept = [w for w, keep in zip(words, ok.tolist(), strict=True) if keep]
    vals, idx = cos.topk(min(k, len(kept)))
    return [WordHit(kept[int(i)], float(v)) for v, i in zip(vals, idx, strict=True)]
