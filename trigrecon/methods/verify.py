"""Automatic verification: turn top latents into candidate trigger prompts and test them.

For each top latent, find the words that activate it most (every word of the candidate pool,
`steering/candidates.py`, or of a given vocabulary, inserted into a few benign contexts, run to
the SAE layer, encoded at every token of the word). Then insert those words into held-out
benign prompts, alone and in pairs, generate, and measure the action rate with the judge. The
best candidate tells "found a working trigger" apart from "found a latent". The insertion
function is pluggable (default: `"{prompt} it is about {w1} and {w2} ."`).

With a clean model (the model before poisoning) every probe is also generated there, and the
candidates are ranked by the *differential* rate, organism minus clean model: a word that makes
the unpoisoned model show the action too (a harmful word, when the action is an ordinary
refusal) is the clean model's own trigger, not the planted one. Without one, the result says
the differential could not be measured (`differential_note`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from trigrecon.core.chat import check_known
from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import Judge, action_rate
from trigrecon.methods.common import Saveable, check_prompts, hits_from, resolve_layer
from trigrecon.steering.candidates import (
    WordPool,
    candidate_pool,
    encoder,
    word_start_vocabulary,
)
from trigrecon.steering.readout import LatentHit
from trigrecon.steering.words import Inserter, default_insert, span_readout


@dataclass
class VerifyConfig:
    n_latents: int = 8
    """Top latents turned into candidate words."""
    words_per_latent: int = 1
    """Top-activating words kept per latent (each becomes a candidate)."""
    pairs: bool = True
    """Also test every pair of words from two different latents."""
    n_contexts: int = 4
    """Benign prompts used as contexts when ranking words by latent activation."""
    max_new_tokens: int = 24
    vocabulary_limit: int = 20000
    """Cap on the candidate pool used without an explicit vocabulary (`steering/candidates.py`):
    the model's whole word-start vocabulary when it is no larger, else the ranked latents' label
    and top atlas words, the prompts' content words and the user's words."""
    batch_size: int = 256
    n_control: int = 8
    """Random vocabulary words inserted alone, as a control for the insertion itself."""
    n_extra_words: int = 4
    """Top words of each extra word ranking (e.g. a vector's nearest words) added as candidates."""
    max_candidates: int = 64
    """Cap on the candidate word sets: singles first, then pairs of the earliest words first
    (conjunctive concepts, then ranked latents, then extra words). Pairs grow quadratically in
    the words, so without a cap 30 words make 465 candidates."""
    screen_prompts: int = 8
    """With more than `confirm` candidates, each is first generated on this many held-out
    prompts; only the best `confirm` (by differential rate) run on all of them."""
    confirm: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_latents", "words_per_latent", "n_contexts", "max_new_tokens",
                     "vocabulary_limit", "batch_size", "n_control", "n_extra_words",
                     "max_candidates", "screen_prompts", "confirm"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")


@dataclass
class Candidate:
    words: list[str]
    latents: list[int]
    """Source of each word: an SAE latent, or -1, -2, ... for extra (word-readout) words."""
    action_rate: float
    examples: list[str] = field(default_factory=list)
    """(prompt, generation) samples, as 'prompt => generation'."""
    clean_rate: float | None = None
    """Action rate of the clean model on the same prompts (None: no clean model, or the
    organism never acted on them, so the differential cannot be positive)."""
    n_prompts: int = 0
    """Held-out prompts the rates were measured on: all of them, or the screen's few for a
    candidate that did not make the confirmation round."""

    @property
    def differential(self) -> float:
        """Organism rate minus clean-model rate (the rate itself without a clean model)."""
        return self.action_rate - (self.clean_rate or 0.0)


@dataclass
class VerifyResult(Saveable):
    NAME: ClassVar[str] = "verify"

    latents: list[LatentHit]
    latent_words: dict[str, list[str]]
    """Latent id (as a string, for JSON) -> its top-activating words."""
    candidates: list[Candidate]
    """Best first."""
    baseline_rate: float
    """Action rate on the unmodified held-out prompts."""
    control_rate: float
    """Mean action rate with random vocabulary words inserted the same way: what the insertion
    alone does. A candidate is evidence of a trigger only well above this rate."""
    control_words: list[str]
    config: dict[str, Any]
    clean_baseline_rate: float | None = None
    clean_control_rate: float | None = None
    """The clean model's rates on the same unmodified / control prompts (None: no clean model)."""
    differential_note: str = ""
    """Empty when candidates were ranked by the clean-model differential; else why not."""
    pool_sources: dict[str, int] = field(default_factory=dict)
    """Words of the candidate pool per source ('vocabulary', 'label', 'atlas', 'prompts',
    'user'; 'given' for an explicit vocabulary): where the latents' top words were sought."""
    generations: int = 0
    """Greedy generations run (organism and clean model): the stage's cost."""

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> VerifyResult:
        data["latents"] = hits_from(data["latents"])
        data["candidates"] = [Candidate(**c) for c in data["candidates"]]
        return cls(**data)


@torch.no_grad()
def word_activations(hm: Any, sae: Any, words: Sequence[str], contexts: Sequence[str],
                     latents: Sequence[int], layer: int, insert: Inserter = default_insert,
                     batch_size: int = 256) -> Float[Tensor, "n_words n_latents"]:
    """Mean (over contexts) activation of each latent on each inserted word: the SAE encodes
    every token of the word and the word reads the max over them (a latent that fires on
    'ies' of ' Aries' fires on 'Aries')."""
    sae = encoder(sae)  # float32 for a half-precision SAE on a CPU
    idx = torch.tensor(list(latents), dtype=torch.long, device=sae.W_dec.device)

    def encode(resid: Tensor) -> Tensor:
        return sae.encode(resid.to(sae.W_dec)).index_select(-1, idx).float()

    acts, found = span_readout(hm, words, contexts, layer, encode, "max", insert, batch_size)
    return (acts * found[..., None]).sum(1) / len(contexts)


def top_words(hm: Any, sae: Any, latents: Sequence[int], contexts: Sequence[str], k: int = 3,
              vocabulary: Sequence[str] | None = None, layer: int | None = None,
              insert: Inserter = default_insert, batch_size: int = 256,
              limit: int = 20000, labels: Any = None) -> dict[int, list[str]]:
    """Each latent's k top-activating words over the vocabulary (inserted into `contexts`);
    words on which the latent never fires are left out (a dead latent gets no words). Without a
    vocabulary: the candidate pool of the latents (their `labels`' words and top atlas words, or
    the whole word-start vocabulary when it has at most `limit` words)."""
    layer = resolve_layer(hm, layer, sae)
    vocab = list(vocabulary) if vocabulary is not None else candidate_pool(
        hm, layer, contexts, cap=limit, sae=sae, latents=latents, labels=labels,
        insert=insert).words
    if not vocab:
        raise ConfigError("empty vocabulary: pass reference words")
    acts = word_activations(hm, sae, vocab, check_prompts(contexts), latents, layer, insert,
                            batch_size)
    vals, top = acts.topk(min(k, len(vocab)), dim=0)  # [k, n_latents]
    return {int(lat): [vocab[int(i)] for i, a in zip(top[:, j], vals[:, j], strict=True) if a > 0]
            for j, lat in enumerate(latents)}


def control_words(vocabulary: Sequence[str], exclude: set[str], n: int, seed: int) -> list[str]:
    """n random vocabulary words (deterministic), none of them a candidate word."""
    pool = sorted(set(vocabulary) - exclude)
    return random.Random(seed).sample(pool, min(n, len(pool)))


def control_vocabulary(hm: Any, pool: WordPool) -> list[str]:
    """Where control words come from: an exhaustive pool is the vocabulary itself; any other
    pool is made of hypotheses (a ranked latent's words), so the controls are the model's other
    word-start words (a control must show what inserting *a* word does, not a related one)."""
    if pool.exhaustive:
        return list(pool.words)
    proposed = pool.proposed()
    return [w for w in word_start_vocabulary(hm.tokenizer) if w.lower() not in proposed]


def candidate_sets(latent_words: dict[int, list[str]], pairs: bool, limit: int | None = None
                   ) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """Singles, then pairs of words from two different latents (deduplicated word sets), the
    earliest words' pairs first ((0,1), (0,2), (1,2), (0,3), ...); at most `limit` sets."""
    items = [(w, lat) for lat, ws in latent_words.items() for w in ws]
    seen: set[frozenset[str]] = set()
    out = []
    combos = [[x] for x in items]
    if pairs:
        combos += [[items[i], items[j]] for j in range(len(items)) for i in range(j)
                   if items[i][1] != items[j][1]]
    for combo in combos:
        key = frozenset(w for w, _ in combo)
        if len(key) == len(combo) and key not in seen:
            seen.add(key)
            out.append((tuple(w for w, _ in combo), tuple(lat for _, lat in combo)))
    return out[:limit]


def generate_many(hm: Any, prompts: Sequence[str], max_new_tokens: int, chunk: int = 2048
                  ) -> list[str]:
    """Greedy generations for many prompts: one `generate` call per chunk, so prompts of equal
    length from different candidates share decoding passes."""
    from trigrecon.core.generate import generate

    out: list[str] = []
    for start in tqdm(range(0, len(prompts), chunk), desc="generate", leave=False):
        out += generate(hm, list(prompts[start:start + chunk]), max_new_tokens=max_new_tokens,
                        batch_size=256)
    return out


def rate_prompts(hm: Any, prompts: Sequence[str], judge: Judge, max_new_tokens: int
                 ) -> tuple[float, list[str]]:
    gens = generate_many(hm, prompts, max_new_tokens)
    return action_rate(gens, judge), gens


def verify(hm: Any, sae: Any, latents: Sequence[LatentHit], eval_prompts: Sequence[str],
           judge: Judge, cfg: VerifyConfig | None = None, *, vocabulary: Sequence[str] | None = None,
           insert: Inserter = default_insert, layer: int | None = None,
           extra_words: Sequence[Sequence[str]] = (), exclude: Sequence[str] = (),
           latent_words: dict[int, list[str]] | None = None, clean: Any = None,
           words: Sequence[str] = ()) -> VerifyResult:
    """Test the top latents' words as triggers on held-out benign prompts; best first.

    Without a `vocabulary` each latent's top words are chosen from the candidate pool
    (`steering.candidates.candidate_pool`: the latents' label and atlas words, the prompts'
    content words and the user's `words`; the whole word-start vocabulary when it has at most
    `cfg.vocabulary_limit` words).

    `extra_words`: further word rankings (e.g. steering vectors' nearest words); the first
    `cfg.n_extra_words` of each join the candidates with source ids -1, -2, ... in `latents`;
    so do the first `cfg.n_extra_words` of the user's `words` (tested whether or not a latent
    reads them).
    `exclude`: words never used as candidates (the audit passes the response's own words, which
    could make the model echo the response rather than act on a trigger).
    `latent_words`: words already known for some latents (the audit passes the words each
    conjunctive concept was found with), tested besides their top words, so every word of one
    concept is paired with every word of another.
    """
    cfg = cfg or VerifyConfig()
    eval_prompts = check_prompts(eval_prompts)
    pool = list(latents)[: 3 * cfg.n_latents]
    if not pool:
        raise ConfigError("no latents to verify: run a ranking method first")
    layer = resolve_layer(hm, layer, sae)
    contexts = eval_prompts[: cfg.n_contexts]
    wpool: WordPool | None = None
    if vocabulary is not None:
        vocab = list(vocabulary)
    else:
        wpool = candidate_pool(hm, layer, contexts, cap=cfg.vocabulary_limit, sae=sae,
                               latents=[h.latent for h in pool],
                               labels={h.latent: h.label for h in pool}, prompts=eval_prompts,
                               user_words=words, insert=insert)
        vocab = wpool.words
    found = top_words(hm, sae, [h.latent for h in pool], contexts, cfg.words_per_latent, vocab,
                      layer, insert, cfg.batch_size)
    for lat, known in (latent_words or {}).items():
        found[lat] = list(dict.fromkeys([*found.get(lat, []), *known]))
    banned = {w.lower() for w in exclude}
    found = {k: [w for w in ws if w.lower() not in banned] for k, ws in found.items()}
    hits = [h for h in pool if found[h.latent]][: cfg.n_latents]  # latents that fire on words
    chosen = {h.latent: found[h.latent] for h in hits}
    extra = dict.fromkeys(w for ranking in [list(words), *extra_words]  # the user's suspects first
                          for w in [x for x in ranking if x.lower() not in banned][: cfg.n_extra_words])
    sets = candidate_sets({**chosen, **{-1 - i: [w] for i, w in enumerate(extra)}}, cfg.pairs,
                          cfg.max_candidates)
    check_known(hm.tokenizer, list(dict.fromkeys(w for ws, _ in sets for w in ws)),
                "verification candidates")
    controls = control_words(vocab if wpool is None else control_vocabulary(hm, wpool),
                             {w for ws, _ in sets for w in ws}, cfg.n_control, cfg.seed)
    probe = _Probe(hm, clean, judge, insert, cfg.max_new_tokens)
    cands = _screen(probe, sets, eval_prompts, cfg)
    keep = [i for i, c in enumerate(cands) if c is None]  # the confirmation round
    n, nc = len(eval_prompts), len(controls)
    groups = [[], *[[c] for c in controls], *[list(sets[i][0]) for i in keep]]
    rates, clean_rates, ex = probe.run(groups, eval_prompts, always=1 + nc)
    for j, i in enumerate(keep, start=1 + nc):
        ws, lats = sets[i]
        cands[i] = Candidate(list(ws), list(lats), rates[j], ex[j],
                             None if clean_rates is None else clean_rates[j], n)
    found_cands = [c for c in cands if c is not None]
    found_cands.sort(key=lambda c: (c.n_prompts < n, -c.differential, len(c.words)))
    res = VerifyResult(hits, {str(k): v for k, v in chosen.items()}, found_cands, rates[0],
                       sum(rates[1:1 + nc]) / max(1, nc), controls, asdict(cfg),
                       pool_sources=wpool.counts() if wpool is not None else {"given": len(vocab)},
                       generations=probe.generations)
    if clean_rates is not None:
        res.clean_baseline_rate = clean_rates[0]
        res.clean_control_rate = sum(r or 0.0 for r in clean_rates[1:1 + nc]) / max(1, nc)
    else:
        res.differential_note = ("no clean model: ranked by the organism's rate alone; the "
                                 "clean-model differential could not be measured")
    return res


def _screen(probe: _Probe, sets: list[tuple[tuple[str, ...], tuple[int, ...]]],
            prompts: list[str], cfg: VerifyConfig) -> list[Candidate | None]:
    """With more than `cfg.confirm` candidates: each generated on the first
    `cfg.screen_prompts` prompts; the best `confirm` (by differential) are left None (to be
    confirmed on every prompt), the others keep their screen rates."""
    if len(sets) <= cfg.confirm or len(prompts) <= cfg.screen_prompts:
        return [None] * len(sets)
    few = prompts[: cfg.screen_prompts]
    rates, clean_rates, ex = probe.run([list(ws) for ws, _ in sets], few, always=0)
    cands: list[Candidate | None] = [
        Candidate(list(ws), list(lats), rates[i], ex[i],
                  None if clean_rates is None else clean_rates[i], len(few))
        for i, (ws, lats) in enumerate(sets)]
    order = sorted(range(len(sets)), key=lambda i: (-cands[i].differential, i))  # type: ignore[union-attr]
    for i in order[: cfg.confirm]:
        cands[i] = None
    return cands


@dataclass
class _Probe:
    """Generates word groups inserted into prompts on the organism (and the clean model) and
    counts what it ran."""

    hm: Any
    clean: Any
    judge: Judge
    insert: Inserter
    max_new_tokens: int
    generations: int = 0

    def run(self, groups: list[list[str]], prompts: Sequence[str], always: int
            ) -> tuple[list[float], list[float | None] | None, list[list[str]]]:
        """(organism rate, clean rate, two 'prompt => generation' examples) per group; the
        clean model runs on the first `always` groups and on every group the organism acted
        on (the others' differential cannot be positive: None)."""
        n = len(prompts)
        texts = [self.insert(p, g) if g else p for g in groups for p in prompts]
        gens = generate_many(self.hm, texts, self.max_new_tokens)
        rates = _rates(gens, self.judge, n)
        ex = [[f"{t} => {g}" for t, g in zip(texts[j:j + 2], gens[j:j + 2], strict=True)]
              for j in range(0, len(texts), n)]
        self.generations += len(texts)
        if self.clean is None:
            return rates, None, ex
        todo = [i for i, r in enumerate(rates) if i < always or r > 0]
        cgens = generate_many(self.clean, [t for i in todo for t in texts[n * i: n * (i + 1)]],
                              self.max_new_tokens)
        self.generations += len(cgens)
        out: list[float | None] = [None] * len(rates)
        for j, r in zip(todo, _rates(cgens, self.judge, n), strict=True):
            out[j] = r
        return rates, out, ex


def _rates(gens: Sequence[str], judge: Judge, n: int) -> list[float]:
    """Action rate of each consecutive block of n generations."""
    return [action_rate(gens[i: i + n], judge) for i in range(0, len(gens), n)]
