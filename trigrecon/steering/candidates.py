"""Open-vocabulary candidate words: where the words a search tries come from.

A real tokenizer's vocabulary is mostly word pieces, and a trigger may be several tokens
(" soothsayer", "cross-country skiing"), so candidates are gathered from several sources and
merged into one capped `WordPool` that remembers where each word came from:

- `label_words`: words of a latent's label (a Neuronpedia explanation, or the project's
  auto-labels, whose bracketed tokens are rebuilt into whole words: "Ar[ies]" -> "Aries");
- `TokenAtlas`: the in-context residual of every word-start token of the model
  (`word_start_vocabulary`), built once per (model, layer, contexts) with the fast readout of
  `words.span_readout` (about one token per word per context) and kept in memory; it gives each
  latent's top-activating words (`latent_words`: SAE-encoding the table, no forward pass) and the
  words nearest a steering direction (`nearest`);
- the content words of the user's prompts (`content_words`) and a user word list.

When the model's whole word-start vocabulary fits under the cap, the pool IS that vocabulary
(exhaustive; the toy organisms' 863-word language always is), plus any readable extra words.

Cost. The atlas: |vocabulary| x |contexts| one-token forward passes up to the layer, once per
(model, layer, contexts) (SmolLM2, 24,379 words x 4 contexts at layer 8: 174 s on a 2-core CPU
busy with other jobs, 22 s of it tokenising; 225 MB in float32). Its SAE readout is one encode of
the table per SAE (30 s there), then lookups. The pool itself runs no model. What a pool costs
its user is its size: `verify` runs |pool| x n_contexts word readouts, the conjunctive sweep
|pool| x sweep_prompts forward passes (the SmolLM2 pool of 4 latents, a direction and 4 prompts:
75 words where the first 2,000 vocabulary words were swept before).
"""

from __future__ import annotations

import copy
import re
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from trigrecon.core.chat import unknown_words
from trigrecon.core.errors import ConfigError
from trigrecon.steering.words import Inserter, WordHit, default_insert, span_readout

# --- Words of text ---------------------------------------------------------------------------

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own please same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself yourselves tell give write explain describe
make list name show help want need know like get let use one two many much thing things something
anything way really could would shall may might must quick short brief simple good best new
""".split())  # noqa: SIM905 - a word block reads better than a list literal
"""English function words and request verbs: never key words of a prompt."""

LABEL_STOP_WORDS = frozenset("""
references reference mentions mention mentioned related relating relate terms term words word
phrases phrase concepts concept contexts context text texts token tokens involving involve
discussing discussion discussions topics topic various specific specifically especially including
particularly associated usage used using instances instance occurrences often typically
""".split())  # noqa: SIM905
"""What explanations say about their subject rather than the subject ("references to ...")."""

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]")
_CONTEXTS = re.compile(r"\(contexts:(.*)\)\s*$", re.S)
_BRACKET = re.compile(r"([A-Za-z'\-]*)\[([^\[\]]+)\]([A-Za-z'\-]*)")


def content_words(prompt: str, min_len: int = 3) -> list[str]:
    """The prompt's content words in order, lower-cased, without stop words or repeats."""
    words = (w.lower().strip("'-") for w in _WORD.findall(prompt))
    keep = (w for w in words if len(w) >= min_len and w not in STOP_WORDS)
    return list(dict.fromkeys(keep))


def _letters(word: str, min_len: int = 3) -> bool:
    """A word of at least `min_len` ASCII letters (inner hyphens/apostrophes allowed)."""
    return sum(c.isalpha() for c in word) >= min_len and _WORD.fullmatch(word) is not None \
        and word.isascii()


def _dedupe(words: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for w in words:
        seen.setdefault(w.lower(), w)
    return list(seen.values())


def label_words(description: str | None) -> list[str]:
    """Candidate words of a latent label.

    Auto-labels ("ies, zodiac (contexts: '... What do Ar[ies]'; ...)"): the whole word around
    each bracketed token, rebuilt from its context ("Ar[ies]" -> "Aries"; "and[ ski]" -> "ski",
    a leading space starting a word), then the listed tokens of 3+ letters ("ies", "zodiac": a
    fragment stays, it is one cheap candidate); "category: token" items give both parts.
    Free-text explanations ("references to fruits and berries"): their content words, less
    what explanations say about themselves (`LABEL_STOP_WORDS`)."""
    text = (description or "").strip()
    ctx = _CONTEXTS.search(text)
    if ctx is None:
        return [w for w in content_words(text) if w not in LABEL_STOP_WORDS]
    rebuilt = []
    for pre, tok, post in _BRACKET.findall(ctx.group(1)):
        word = (tok.strip() if tok[:1].isspace() else pre + tok.strip()) + post
        rebuilt.append(word.strip("'-"))
    items = [p.strip() for item in text[: ctx.start()].split(",") for p in item.split(":")]
    return _dedupe(w for w in [*rebuilt, *items] if _letters(w))


# --- The model's words ------------------------------------------------------------------------

WORD_START_MARKERS = ("Ġ", "▁")
"""Byte-level BPE (GPT-2, Llama-3, SmolLM2) and SentencePiece word-start markers."""


def word_start_marker(tokenizer: Any) -> str | None:
    """The marker the tokenizer puts on word-initial tokens (on at least 5% of its tokens), or
    None (a word-level tokenizer, whose every token is a whole word)."""
    vocab = tokenizer.get_vocab()
    for m in WORD_START_MARKERS:
        if sum(t.startswith(m) for t in vocab) >= 0.05 * len(vocab):
            return m
    return None


def word_start_vocabulary(tokenizer: Any, min_letters: int | None = None) -> list[str]:
    """The tokens that begin a word, as words: alphabetic ASCII, deduplicated case-insensitively
    (the lower-case form kept when there is one), in id order (the order is no selection: every
    word is used). `min_letters` defaults to 3 for a subword tokenizer (its 2-letter word-start
    tokens are mostly prefixes: Ġre, Ġun, Ġco) and 2 for a word-level one (every token a word:
    the toy language's 'ox', 'go')."""
    marker = word_start_marker(tokenizer)
    least = min_letters if min_letters is not None else (3 if marker else 2)
    special = set(getattr(tokenizer, "all_special_tokens", []))
    words: dict[str, str] = {}
    for tok, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if tok in special or (marker is not None and not tok.startswith(marker)):
            continue
        w = tok[len(marker):] if marker else tok
        if len(w) >= least and w.isascii() and w.isalpha():
            key = w.lower()
            if key not in words or w == key:
                words[key] = w
    return list(words.values())


# --- The atlas --------------------------------------------------------------------------------

TOP_WORDS = 64
"""Top words kept per latent by `TokenAtlas.latent_words`' one-pass table."""
ENCODE_CHUNK = 512
"""Atlas words SAE-encoded at once (memory: chunk x contexts x d_sae floats)."""


@dataclass
class TokenAtlas:
    """Every word-start token's residual at one layer, inserted into a few contexts."""

    words: list[str]
    resid: Float[Tensor, "n_words n_ctx d_model"]
    """Mean over the word's tokens (almost always one) in each context; zeros where not found."""
    found: Bool[Tensor, "n_words n_ctx"]
    layer: int
    contexts: list[str]
    seconds: float = 0.0
    """Build time."""
    _unit: Tensor | None = field(default=None, repr=False)
    _kept: list[int] = field(default_factory=list, repr=False)
    _tops: dict[Any, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.words)

    def _table(self) -> tuple[Tensor, list[int]]:
        """Unit rows of the mean residuals centred over the atlas (words found somewhere)."""
        if self._unit is None:
            n = self.found.sum(1, keepdim=True).clamp_min(1)
            mean = (self.resid * self.found[..., None]).sum(1) / n
            ok = self.found.any(1)
            self._kept = ok.nonzero().flatten().tolist()
            centred = mean[ok] - mean[ok].mean(0)
            self._unit = torch.nn.functional.normalize(centred, dim=-1)
        return self._unit, self._kept

    def nearest(self, direction: Float[Tensor, "d_model"], k: int = 10,
                exclude: Iterable[str] = ()) -> list[WordHit]:
        """The k words whose centred residual has the largest cosine with `direction`
        (`words.nearest_words` on the atlas), leaving out `exclude` (case-insensitive)."""
        unit, kept = self._table()
        v = direction.detach().float().cpu().reshape(-1)
        if v.shape[0] != unit.shape[-1]:
            raise ConfigError(f"direction has {v.shape[0]} numbers; the atlas is d_model="
                              f"{unit.shape[-1]} (layer {self.layer})")
        cos = unit @ torch.nn.functional.normalize(v, dim=0)
        banned = {w.lower() for w in exclude}
        hits: list[WordHit] = []
        for i in cos.argsort(descending=True).tolist():
            if len(hits) == k:
                break
            if self.words[kept[i]].lower() not in banned:
                hits.append(WordHit(self.words[kept[i]], float(cos[i])))
        return hits

    def _chunks(self, sae: Any, latents: Sequence[int] | None) -> Iterator[Tensor]:
        """Mean (over contexts) activations of `latents` (None: all) on successive word chunks."""
        sae = encoder(sae)
        idx = None if latents is None else \
            torch.tensor(list(latents), dtype=torch.long, device=sae.W_dec.device)
        chunk = ENCODE_CHUNK
        for a in range(0, len(self.words), chunk):
            with torch.no_grad():
                acts = sae.encode(self.resid[a:a + chunk].to(sae.W_dec))
            acts = acts if idx is None else acts.index_select(-1, idx)
            yield (acts.float().cpu() * self.found[a:a + chunk, :, None]).sum(1) / len(self.contexts)

    def activations(self, sae: Any, latents: Sequence[int]) -> Float[Tensor, "n_words n_latents"]:
        """Mean (over contexts) activation of each latent on each atlas word (what
        `verify.word_activations` gives for one-token words), from the stored table."""
        return torch.cat(list(self._chunks(sae, latents)))

    def _top_words(self, sae: Any) -> tuple[Tensor, Tensor]:
        """(values, word indices) [TOP_WORDS, d_sae]: every latent's top words, from one encode
        of the table per SAE (and its current weights); later readouts are lookups."""
        key = (id(sae), _weights_state(sae))
        if key not in self._tops:
            d_sae = int(sae.W_dec.shape[0])
            vals, idx = torch.empty(0, d_sae), torch.empty(0, d_sae, dtype=torch.long)
            start = 0
            for acts in self._chunks(sae, None):  # a running top list: never the whole table
                here = torch.arange(start, start + len(acts))[:, None].expand_as(acts)
                start += len(acts)
                vals, idx = torch.cat([vals, acts]), torch.cat([idx, here])
                keep = vals.topk(min(TOP_WORDS, len(vals)), dim=0)
                vals, idx = keep.values, idx.gather(0, keep.indices)
            self._tops = {key: (vals, idx)}  # the last SAE only: a table per SAE is d_sae x 64
        return self._tops[key]

    def latent_words(self, sae: Any, latents: Sequence[int], k: int = 10
                     ) -> dict[int, list[WordHit]]:
        """Each latent's k top-activating atlas words (those it fires on), best first. Up to
        `TOP_WORDS` words the first call encodes the table once for all latents (SmolLM2 at layer
        8: ~30 s on a CPU), every later call is a lookup."""
        if k > TOP_WORDS:
            acts = self.activations(sae, latents)
            vals, top = acts.topk(min(k, len(self.words)), dim=0)
        else:
            table, where = self._top_words(sae)
            cols = torch.tensor([int(lat) for lat in latents], dtype=torch.long)
            vals, top = table[:k, cols], where[:k, cols]
        return {int(lat): [WordHit(self.words[int(i)], float(v))
                           for v, i in zip(vals[:, j], top[:, j], strict=True) if v > 0]
                for j, lat in enumerate(latents)}


_FLOAT_COPIES: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def encoder(sae: Any) -> Any:
    """The SAE to encode with: `sae` itself, or for a half-precision SAE on a CPU (whose bf16
    matrix products run ~60x slower than float32: 98 s against 1.5 s for 2048 rows of the
    SmolLM2 SAE) a float32 copy, made once per SAE and its current weights."""
    if sae.W_dec.device.type != "cpu" or sae.W_dec.dtype not in (torch.bfloat16, torch.float16):
        return sae
    state = _weights_state(sae)
    held = _FLOAT_COPIES.get(sae)
    if held is None or held[0] != state:
        held = (state, copy.deepcopy(sae).float())
        _FLOAT_COPIES[sae] = held
    return held[1]


_ATLASES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], TokenAtlas]] = \
    weakref.WeakKeyDictionary()
_KEEP = 4


def _weights_state(model: Any) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter is replaced or modified in place (its version counter)."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def token_atlas(hm: Any, layer: int, contexts: Sequence[str], *,
                vocabulary: Sequence[str] | None = None, insert: Inserter = default_insert,
                batch_size: int = 256) -> TokenAtlas:
    """The atlas of `vocabulary` (default: `word_start_vocabulary`) at `layer`, cached in memory
    per model (its current weights), layer, contexts, insertion and system prompt."""
    contexts = list(contexts)
    if not contexts:
        raise ConfigError("a token atlas needs at least one context prompt")
    key = (layer, tuple(contexts), insert, getattr(hm, "system", None), id(hm.tokenizer),
           None if vocabulary is None else tuple(vocabulary), _weights_state(hm.model))
    cache = _ATLASES.setdefault(hm.model, {})
    if key not in cache:
        words = list(vocabulary) if vocabulary is not None else word_start_vocabulary(hm.tokenizer)
        if not words:
            raise ConfigError("the atlas vocabulary is empty: pass words")
        t = time.perf_counter()
        resid, found = span_readout(hm, words, contexts, layer, None, "mean", insert, batch_size)
        while len(cache) >= _KEEP:
            cache.pop(next(iter(cache)))
        cache[key] = TokenAtlas(words, resid, found, layer, contexts, time.perf_counter() - t)
    return cache[key]


# --- The pool ---------------------------------------------------------------------------------

@dataclass
class WordPool:
    """Candidate words, best sources first, each with the sources that proposed it."""

    words: list[str]
    sources: dict[str, list[str]]
    """Word -> 'user', 'label:<latent>', 'atlas:<latent>', 'direction:<name>', 'prompts',
    'vocabulary'."""
    exhaustive: bool
    """The model's whole word-start vocabulary is in the pool (it fits under the cap)."""
    vocabulary_size: int
    cap: int
    dropped: int = 0
    """Proposed words left out by the cap."""

    def __len__(self) -> int:
        return len(self.words)

    def counts(self) -> dict[str, int]:
        """Words per source kind ('label', 'atlas', ...); a word counts once per kind."""
        out: dict[str, int] = {}
        for srcs in self.sources.values():
            for kind in dict.fromkeys(s.split(":")[0] for s in srcs):
                out[kind] = out.get(kind, 0) + 1
        return out

    def proposed(self) -> set[str]:
        """Words (lower-cased) some hypothesis proposed: a label, the atlas, a direction."""
        return {w.lower() for w, srcs in self.sources.items()
                if any(s.split(":")[0] in ("label", "atlas", "direction") for s in srcs)}


def _labels_of(labels: Any, latent: int) -> str:
    text = labels.get(latent) if labels is not None else None
    return str(text or "")


def candidate_pool(hm: Any, layer: int, contexts: Sequence[str], *, cap: int = 2000,
                   sae: Any = None, latents: Sequence[int] = (), labels: Any = None,
                   directions: Mapping[str, Tensor] | None = None, prompts: Sequence[str] = (),
                   user_words: Sequence[str] = (), per_latent: int = 10, per_direction: int = 20,
                   insert: Inserter = default_insert) -> WordPool:
    """Merge the candidate sources (module docstring), each word remembering its sources.

    Priority when the cap binds: the user's words, then per ranked latent (in rank order) its
    label's words and its `per_latent` top atlas words, then each direction's `per_direction`
    nearest atlas words, then the prompts' content words. When the word-start vocabulary fits
    under `cap` the pool is the vocabulary (in its order) followed by the readable extra words,
    as many as the cap leaves room for, and no atlas is built. `labels`: a mapping or labeller
    (`.get(latent)`); `directions`: name -> a residual vector at `layer`."""
    if cap < 0:
        raise ConfigError(f"cap={cap} must be >= 0")
    vocab = word_start_vocabulary(hm.tokenizer)
    exhaustive = len(vocab) <= cap
    proposed: list[tuple[str, str]] = [(w, "user") for w in user_words if w.strip()]
    atlas = None
    if not exhaustive and ((sae is not None and latents) or directions):
        atlas = token_atlas(hm, layer, contexts, insert=insert)
    tops = atlas.latent_words(sae, latents, per_latent) if atlas and sae is not None and latents \
        else {}
    for lat in latents:
        proposed += [(w, f"label:{lat}") for w in label_words(_labels_of(labels, lat))]
        proposed += [(h.word, f"atlas:{lat}") for h in tops.get(int(lat), [])]
    for name, vec in (directions or {}).items():
        if atlas is not None:
            proposed += [(h.word, f"direction:{name}") for h in atlas.nearest(vec, per_direction)]
    proposed += [(w, "prompts") for p in prompts for w in content_words(p)]
    return _merge(hm.tokenizer, vocab, proposed, exhaustive, cap)


def _merge(tokenizer: Any, vocab: list[str], proposed: list[tuple[str, str]], exhaustive: bool,
           cap: int) -> WordPool:
    """Deduplicate (case-insensitively), drop words the tokenizer cannot read, apply the cap."""
    surface: dict[str, str] = {}
    sources: dict[str, list[str]] = {}
    in_vocab = {w.lower() for w in vocab}
    if exhaustive:
        for w in vocab:
            surface[w.lower()], sources[w.lower()] = w, ["vocabulary"]
    for w, src in proposed:
        text = " ".join(w.split())
        key = text.lower()
        if key not in surface:
            if key not in in_vocab and unknown_words(tokenizer, text):
                continue
            surface[key], sources[key] = text, []
        if src not in sources[key]:
            sources[key].append(src)
    keys = list(surface)
    kept = keys[:cap]  # exhaustive: the vocabulary comes first and fits
    return WordPool([surface[k] for k in kept], {surface[k]: sources[k] for k in kept},
                    exhaustive, len(vocab), cap, len(keys) - len(kept))
