"""Words in context: residuals of words inserted into benign prompts, read at ALL their tokens.

Two uses: the SAE activations of each word (a latent's top-activating words, in `verify`), and
a readout of a steering vector that needs no SAE: the words whose residual (centred over the
vocabulary) points most along the vector. The second still works when an SAE has no latent for
the trigger's concept.

A word is read over its whole token span (`word_span`): " soothsayer" is three SmolLM2 tokens,
and its residual is their mean (`word_residuals`), its SAE activation their max
(`verify.word_activations`); both go through one batched readout, `span_readout`.

Fast path. Under causal attention nothing after a word's last token changes its residuals, so
each sequence is cut after the word; and for one context every word shares the tokens before it
(the chat template and the context's text). `span_readout` tokenises every full text, groups the
jobs by the exact tokens before the word, computes each group's prefix keys/values once and runs
only the word's own tokens (usually one) for a batch of words: the prefix cache of
`forward.SteeredForward`, through `core.lean.LeanBlocks` for a Llama-style model (2-3x the
TransformerLens blocks on one-token words) or TransformerLens `past_kv_cache`. Reading the prefix
off the full tokenisation makes it exact by construction: where a word changes how the text
before it tokenises, its prefix differs, and a prefix no other word shares runs as a plain full
sequence. `fast=False` runs every cut sequence whole, right-padded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from trigrecon.core import lean as _lean
from trigrecon.core.chat import render_prompt
from trigrecon.core.errors import ConfigError
from trigrecon.steering.forward import kv_entries, prefix_cacheable, resid_bounds

Inserter = Callable[[str, Sequence[str]], str]
Transform = Callable[[Tensor], Tensor]
"""Applied to the residuals of every span token at once: [n_tok, d_model] -> [n_tok, d_out]."""
Reduce = Literal["mean", "max"]
_SLOT = "\u2063trigrecon-word\u2063"


def default_insert(prompt: str, words: Sequence[str]) -> str:
    """'<prompt> it is about w1 and w2 .'"""
    return f"{prompt} it is about {' and '.join(words)} ."


@dataclass
class WordHit:
    word: str
    score: float


def word_variants(tokenizer: Any, word: str) -> list[list[int]]:
    """Token ids of the word with a leading space, then without (the order `word_span` tries)."""
    return [list(tokenizer(v, add_special_tokens=False)["input_ids"]) for v in (" " + word, word)]


def word_span(tokenizer: Any, tokens: Sequence[int], word: str,
              variants: list[list[int]] | None = None) -> tuple[int, int] | None:
    """(start, stop) of the last occurrence of the word's tokens (with a leading space, else
    without), or None. `variants`: `word_variants(tokenizer, word)`, when already known."""
    tokens = list(tokens)
    for ids in variants if variants is not None else word_variants(tokenizer, word):
        n = len(ids)
        for s in range(len(tokens) - n, -1, -1):
            if n and tokens[s] == ids[0] and tokens[s:s + n] == ids:
                return s, s + n
    return None


@dataclass
class _Job:
    """One word in one context: the chat's tokens up to the word's end, and the word's span."""

    word: int
    ctx: int
    tokens: list[int]
    span: tuple[int, int]


def _context_texts(hm: Any, words: Sequence[str], context: str, insert: Inserter) -> list[str]:
    """The chat text of each word inserted into `context` (the template rendered once, the word
    substituted into it, when inserting is a plain substitution for that word)."""
    tok, system = hm.tokenizer, getattr(hm, "system", None)
    probe = insert(context, [_SLOT])
    chat = render_prompt(tok, probe, system) if probe.count(_SLOT) == 1 else ""
    if chat.count(_SLOT) != 1 or render_prompt(tok, insert(context, [words[0]]), system) != \
            chat.replace(_SLOT, words[0]):
        return [render_prompt(tok, insert(context, [w]), system) for w in words]
    head, tail = chat.split(_SLOT)
    return [head + w + tail if insert(context, [w]) == probe.replace(_SLOT, w)
            else render_prompt(tok, insert(context, [w]), system) for w in words]


def _jobs(hm: Any, words: Sequence[str], contexts: Sequence[str], insert: Inserter) -> list[_Job]:
    """Every (word, context) whose word was found in its tokenised chat, cut after the word."""
    spaced, bare = (hm.tokenizer(list(ws), add_special_tokens=False)["input_ids"]
                    for ws in ([" " + w for w in words], list(words)))
    variants = [[list(a), list(b)] for a, b in zip(spaced, bare, strict=True)]
    jobs = []
    for ci, c in enumerate(contexts):
        texts = _context_texts(hm, words, c, insert)
        ids = hm.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for wi, toks in enumerate(ids):
            span = word_span(hm.tokenizer, toks, words[wi], variants[wi])
            if span is not None:
                jobs.append(_Job(wi, ci, list(toks[: span[1]]), span))
    return jobs


def _prefix_entries(model: Any, prefix: list[int], stop: int, device: torch.device) -> list[Any]:
    """Keys/values of `prefix` at blocks 0..stop-1 (one run, batch 1)."""
    from transformer_lens import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, 1)
    tokens = torch.tensor([prefix], device=device)
    model(tokens, attention_mask=torch.ones_like(tokens), past_kv_cache=cache, stop_at_layer=stop)
    return list(cache.entries[:stop])


def _run(model: Any, prefix: list[int], jobs: list[_Job], stop: int, batch_size: int,
         lean: bool) -> Iterator[tuple[list[_Job], Tensor, int]]:
    """(chunk of jobs, their residuals [rows, pos, d], positions cut) for one prefix group; only
    the tokens after the prefix run, right-padded (causal: padding is never attended to)."""
    from transformer_lens import TransformerLensKeyValueCache

    dev = next(model.parameters()).device
    cut = len(prefix)
    entries = _prefix_entries(model, prefix, stop, dev) if cut else []
    blocks = _lean.LeanBlocks(model, 0, stop, entries or None) if lean else None
    jobs = sorted(jobs, key=lambda j: len(j.tokens))
    for a in range(0, len(jobs), batch_size):
        chunk = jobs[a:a + batch_size]
        width = max(len(j.tokens) for j in chunk) - cut
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, j in enumerate(chunk):
            tokens[r, : len(j.tokens) - cut] = torch.tensor(j.tokens[cut:])
            mask[r, : len(j.tokens) - cut] = 1
        if blocks is not None:
            yield chunk, blocks(model.embed(tokens.to(dev))), cut
            continue
        cache = None
        if cut:  # frozen, broadcast to the chunk: every row shares the prefix
            cache = TransformerLensKeyValueCache(
                kv_entries(entries, len(chunk)),
                torch.ones(len(chunk), cut, dtype=torch.long, device=dev), frozen=True)
        yield chunk, model(tokens.to(dev), attention_mask=mask.to(dev), past_kv_cache=cache,
                           stop_at_layer=stop), cut


def _groups(jobs: list[_Job], fast: bool) -> dict[tuple[int, ...], list[_Job]]:
    """Jobs by the exact tokens before their word (fast), or all in one group of full runs
    (key ()); a job whose prefix no other job shares runs in full, batched with the others."""
    groups: dict[tuple[int, ...], list[_Job]] = {}
    for j in jobs:
        groups.setdefault(tuple(j.tokens[: j.span[0]]) if fast else (), []).append(j)
    alone = [k for k, g in groups.items() if k and len(g) == 1]
    for k in alone:
        groups.setdefault((), []).extend(groups.pop(k))
    return groups


@torch.no_grad()
def span_readout(hm: Any, words: Sequence[str], contexts: Sequence[str], layer: int,
                 transform: Transform | None = None, reduce: Reduce = "mean",
                 insert: Inserter = default_insert, batch_size: int = 256, fast: bool = True,
                 dtype: torch.dtype = torch.float32, lean: bool | None = None
                 ) -> tuple[Float[Tensor, "n_words n_ctx d_out"], Bool[Tensor, "n_words n_ctx"]]:
    """Each word inserted into each context, read over its token span at `layer`: `transform`
    (default: none) on every span token's residual, then the `reduce` over the span. Returns
    the readout (zeros where the word was not found in the tokenised text) and where it was found.
    `lean`: run the blocks with `core.lean.LeanBlocks` (default: when the model is a plain
    Llama-style one without hooks; 2-3x the HookedTransformer's speed on one-token words)."""
    if not words or not contexts:
        raise ConfigError("a word readout needs words and contexts")
    if reduce not in ("mean", "max"):
        raise ConfigError(f"reduce={reduce!r}: use 'mean' or 'max'")
    stop, _ = resid_bounds(hm, layer)
    model = hm.model
    jobs = _jobs(hm, words, contexts, insert)
    found = torch.zeros(len(words), len(contexts), dtype=torch.bool)
    out: Tensor | None = None
    groups = _groups(jobs, fast and prefix_cacheable(model))
    if lean is None:
        lean = _lean.supported(model) and not _lean.has_hooks(model)
    elif lean and not _lean.supported(model):
        raise ConfigError("lean=True needs a plain Llama-style model (see core/lean.py)")
    bar = tqdm(total=len(jobs), desc="word readout", leave=False)
    for prefix, group in groups.items():
        for chunk, resid, cut in _run(model, list(prefix), group, stop, batch_size, lean):
            rows = [r for r, j in enumerate(chunk) for _ in range(*j.span)]
            pos = [p - cut for j in chunk for p in range(*j.span)]
            flat = resid[torch.tensor(rows, device=resid.device),
                         torch.tensor(pos, device=resid.device)]
            vals = transform(flat) if transform is not None else flat
            seg = torch.tensor(rows, device=vals.device)[:, None].expand_as(vals)
            red = torch.zeros(len(chunk), vals.shape[-1], dtype=vals.dtype, device=vals.device)
            red.scatter_reduce_(0, seg, vals, "mean" if reduce == "mean" else "amax",
                                include_self=False)
            if out is None:
                out = torch.zeros(len(words), len(contexts), red.shape[-1], dtype=dtype)
            wi, ci = torch.tensor([j.word for j in chunk]), torch.tensor([j.ctx for j in chunk])
            out[wi, ci], found[wi, ci] = red.to(dtype).cpu(), True
            bar.update(len(chunk))
    bar.close()
    if out is None:  # no word found anywhere: width from one transformed residual
        probe = torch.zeros(1, hm.d_model, device=next(model.parameters()).device)
        width = (transform(probe) if transform is not None else probe).shape[-1]
        out = torch.zeros(len(words), len(contexts), width, dtype=dtype)
    return out, found


def word_residuals(hm: Any, words: Sequence[str], contexts: Sequence[str], layer: int,
                   insert: Inserter = default_insert, batch_size: int = 256
                   ) -> tuple[Float[Tensor, "n_words n_ctx d_model"], Bool[Tensor, "n_words n_ctx"]]:
    """Residual at `layer` of each word inserted into each context (the mean over the word's
    tokens), and where it was found."""
    return span_readout(hm, words, contexts, layer, None, "mean", insert, batch_size)


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
