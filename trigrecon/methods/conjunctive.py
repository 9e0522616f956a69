"""Conjunctive triggers by iteration: find a concept, condition on it, search again.

A trigger such as "fruit AND snow sports" may not show up as one direction: with neither concept
in the prompt, either alone barely moves the loss. Each iteration
1. ranks latents on the current (conditioned) prompts with a supervised method
   (SAE-Attribution by default, or supervised SAE-MELBO);
2. inserts the top-activating words of each of the top `n_candidates` new latents into the
   training prompts (cycled across prompts, so the latent is scored as a concept and one lucky
   word of a generic latent does not win) and keeps the latent that lowers the response loss
   most - or stops when none lowers it (words of the response itself are skipped: they lower
   its loss by priming a copy). `score_by="word"` scores each word alone instead.
   A word sweep adds one more candidate: every word of a candidate pool (up to `sweep_words`:
   the model's whole word-start vocabulary when it fits, else the ranked latents' label and atlas
   words, the ranking direction's nearest words, the prompts' content words and the user's words;
   `steering/candidates.py`) inserted beside the concepts found so far, its best
   `words_per_concept` words read out as the SAE latent most active on all of them; the concept
   keeps the best words on which that latent fires at least half as strongly as on its
   strongest (`coherent`). First-order attribution can miss the second half of a conjunction
   (on a "weather AND music" test organism, conditioned on music, the one latent whose top
   words were weather words ranked 1852nd of 2048); the sweep is behavioural and finds it.
   Each step says which source chose its concept ("ranking" or "sweep");
3. conditions the prompts on every concept found so far (their words inserted) and measures the
   action rate on held-out prompts conditioned the same way.
A clause ends when that rate reaches `threshold` (the action is explained) or after `max_iters`.

Clean-model differential (`clean`, the model before poisoning, forward passes only): a candidate
is scored by the organism's response loss *plus* how far it takes the clean model's loss of the
same response below the organism's loss on the plain prompts:
`CE(with it) + max(0, CE(plain) - CE_clean(with it))`. A word that makes the unpoisoned model
give the action as readily (a harmful word, for an ordinary refusal) scores no better than the
plain prompts; a word that only makes the clean model's loss fall somewhat (a fruit word
primes the word "fruit" in a fruit refusal) stays far above that level and costs nothing,
so on an action the clean model never gives the order is unchanged. (The clean model's own
drop, `CE_clean(plain) - CE_clean(with it)`, would penalise exactly such priming words.) The
sweep rescores its `clean_sweep` best words so. Held-out rates are measured on both models
and a clause counts as explained when rate - clean rate reaches `threshold`.

Disjunctions: after a clause is explained the search starts again (up to `max_clauses`) with its
concepts excluded: their latents are never candidates again, and every word that one of their
latents reads at least `exclude_ratio` of its activation on the clause's own words is left out
of the sweep and of the candidates (so a new clause cannot be the old one in other words). A
later clause must first lower the response loss by `min_lift` of the plain prompts' loss, else
nothing more fires and the search stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import Judge, normalise
from trigrecon.methods.common import Saveable, check_prompts, hits_from, make_batch
from trigrecon.methods.verify import (
    Inserter,
    default_insert,
    rate_prompts,
    top_words,
    word_activations,
)
from trigrecon.steering.candidates import candidate_pool
from trigrecon.steering.forward import SteeredForward
from trigrecon.steering.readout import LatentHit, label_of

Ranker = Literal["sae_attribution", "supervised_sae_melbo"]
ScoreBy = Literal["concept", "word"]


@dataclass
class ConjunctiveConfig:
    max_iters: int = 3
    n_candidates: int = 5
    """Top new latents tried as the next concept at each iteration."""
    words_per_concept: int = 3
    """Top-activating words per candidate latent: with `score_by="concept"` all of them score the
    latent and condition the prompts; with "word" each is tried alone and the best is kept."""
    score_by: ScoreBy = "concept"
    threshold: float = 0.8
    """Held-out action rate at which the action counts as explained."""
    ranker: Ranker = "sae_attribution"
    top_k: int = 10
    """Ranking length reported per iteration."""
    n_contexts: int = 4
    max_new_tokens: int = 24
    sweep_words: int = 2000
    """Cap on the words scored by the word sweep (the candidate pool, or the `vocabulary` given);
    0: no sweep, latent candidates only. Bounds the sweep's cost: at most `sweep_words` x
    `sweep_prompts` forward passes per iteration (batched), plus `clean_sweep` x
    `sweep_prompts` on a clean model; each sweep's words and passes are in
    `ConjunctiveResult.sweeps`."""
    sweep_prompts: int = 16
    """Training prompts each sweep word is inserted into."""
    sweep_batch: int = 16
    """Words per batched forward pass of the sweep (memory only)."""
    clean_sweep: int = 64
    """With a clean model: the sweep's best words (by the organism's loss) rescored with the
    clean-model term (forward passes on the clean model)."""
    max_clauses: int = 3
    """Clauses searched (a disjunction A OR B needs 2); 1: stop after the first clause."""
    min_lift: float = 0.15
    """A later clause's first concept must lower the response loss by this share of the plain
    prompts' loss (the lift threshold of the self-awareness buffer, set on astrology)."""
    exclude_ratio: float = 0.5
    """Words read by an explained clause's latent at this share of its activation on the
    clause's words are excluded from later clauses (the `coherent` ratio)."""

    def __post_init__(self) -> None:
        for name in ("max_iters", "n_candidates", "words_per_concept", "top_k", "n_contexts",
                     "max_new_tokens", "sweep_prompts", "sweep_batch", "clean_sweep",
                     "max_clauses"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not isinstance(self.sweep_words, int) or self.sweep_words < 0:
            raise ConfigError(f"sweep_words={self.sweep_words!r} must be an integer >= 0")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"threshold={self.threshold} must be in (0, 1]")
        if not 0 <= self.min_lift < 1 or not 0 < self.exclude_ratio <= 1:
            raise ConfigError(f"min_lift={self.min_lift} must be in [0, 1) and "
                              f"exclude_ratio={self.exclude_ratio} in (0, 1]")
        if self.ranker not in ("sae_attribution", "supervised_sae_melbo"):
            raise ConfigError(f"ranker={self.ranker!r}: use 'sae_attribution' or "
                              "'supervised_sae_melbo'")
        if self.score_by not in ("concept", "word"):
            raise ConfigError(f"score_by={self.score_by!r}: use 'concept' or 'word'")


@dataclass
class ConjunctiveStep:
    iteration: int
    ranking: list[LatentHit]
    """Latent ranking on the prompts conditioned on earlier concepts."""
    chosen: LatentHit
    words: list[str]
    """The chosen latent's words that condition the prompts from now on."""
    loss: float
    """Response CE with every chosen word inserted (lower = more action-like)."""
    action_rate: float
    """Held-out action rate with every concept so far inserted."""
    tried: list[dict[str, Any]] = field(default_factory=list)
    """Each (candidate latent, words) tried and the loss it gives, best first."""
    source: str = "ranking"
    """What proposed the chosen concept: "ranking" (a ranked latent's words) or "sweep"."""
    clause: int = 0
    """Which clause of a disjunction this step belongs to (0: the first)."""
    clean_rate: float | None = None
    """Held-out action rate of the clean model on the same prompts (None: no clean model)."""


@dataclass
class SweepRecord:
    """What one word sweep scored and what it cost."""

    clause: int
    iteration: int
    words: int
    """Words swept (after the response's, earlier concepts' and excluded words)."""
    forward_passes: int
    """Sequences run: every word on every sweep prompt (organism), the clean model's rescoring,
    and the SAE readout of the best words on the contexts."""
    sources: dict[str, int] = field(default_factory=dict)
    """Pool words per source ('vocabulary', 'label', 'atlas', 'direction', 'prompts', 'user';
    'given' for an explicit vocabulary)."""
    exhaustive: bool = False
    """The whole word-start vocabulary was swept."""


@dataclass
class ConjunctiveResult(Saveable):
    NAME: ClassVar[str] = "conjunctive"

    steps: list[ConjunctiveStep]
    explained: bool
    """Whether some clause was explained."""
    baseline_loss: float
    config: dict[str, Any]
    clause_explained: list[bool] = field(default_factory=list)
    """Per clause searched: did its concepts fire the action (differentially) on held-out
    prompts? A last unexplained clause is where the search found nothing more."""
    differential: bool = False
    """Whether a clean model scored the candidates and rates."""
    sweeps: list[SweepRecord] = field(default_factory=list)
    """Every word sweep run, with its size and cost."""

    @property
    def sweep_passes(self) -> int:
        """Forward passes (sequences) spent by all word sweeps."""
        return sum(r.forward_passes for r in self.sweeps)

    @property
    def concepts(self) -> list[LatentHit]:
        return [s.chosen for s in self.steps]

    def clause_steps(self, i: int) -> list[ConjunctiveStep]:
        return [s for s in self.steps if s.clause == i]

    def ranking(self, k: int = 10) -> list[LatentHit]:
        """Found concepts first, then the rest of the last iteration's ranking."""
        out = list(self.concepts)
        for s in reversed(self.steps):
            out += [h for h in s.ranking if h.latent not in {x.latent for x in out}]
        return out[:k]

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> ConjunctiveResult:
        steps = []
        for s in data["steps"]:
            s = dict(s, ranking=hits_from(s["ranking"]), chosen=LatentHit(**s["chosen"]))
            steps.append(ConjunctiveStep(**s))
        sweeps = [SweepRecord(**r) for r in data.get("sweeps", [])]
        return cls(**dict(data, steps=steps, sweeps=sweeps))


def condition(prompts: Sequence[str], concepts: Sequence[Sequence[str]],
              insert: Inserter = default_insert) -> list[str]:
    """Insert one word of every concept into each prompt (cycling through each concept's words)."""
    if not concepts:
        return list(prompts)
    return [insert(p, [ws[i % len(ws)] for ws in concepts]) for i, p in enumerate(prompts)]


@torch.no_grad()
def response_loss(hm: Any, prompts: Sequence[str], response: str, layer: int) -> float:
    fwd = SteeredForward(hm, make_batch(hm, prompts, response), layer)
    return float(fwd.response_ce(torch.zeros(1, fwd.d_model, device=fwd.resid.device))[0])


def _rank(hm: Any, sae: Any, prompts: list[str], response: str, cfg: ConjunctiveConfig,
          labels: Any, method_cfg: Any) -> tuple[list[LatentHit], Tensor]:
    """The latent ranking and the ranker's direction (-gradient, or the best vector)."""
    n = cfg.top_k + cfg.n_candidates * cfg.max_iters
    if cfg.ranker == "sae_attribution":
        from trigrecon.methods.sae_attribution import SAEAttributionConfig, sae_attribution

        acfg = method_cfg or SAEAttributionConfig()
        acfg = SAEAttributionConfig(**dict(asdict(acfg), top_k=max(acfg.top_k, n)))
        res = sae_attribution(hm, sae, prompts, response, acfg, labels)
        return res.ranking(n), -res.grad
    from trigrecon.methods.sae_melbo import sae_melbo

    sr = sae_melbo(hm, sae, prompts, response, method_cfg, labels=labels)
    return sr.ranking(n), sr.vectors[sr.best]


@torch.no_grad()
def word_losses(hm: Any, prompts: Sequence[str], response: str, words: Sequence[str],
                concepts: Sequence[Sequence[str]], layer: int, insert: Inserter = default_insert,
                batch: int = 16) -> dict[str, float]:
    """Mean response CE over `prompts` with each word inserted beside the concepts' words."""
    out: dict[str, float] = {}
    for s in tqdm(range(0, len(words), batch), desc="word sweep", leave=False):
        ws = list(words[s:s + batch])
        texts = [p for w in ws for p in condition(prompts, [*concepts, [w]], insert)]
        fwd = SteeredForward(hm, make_batch(hm, texts, response), layer)
        ce = fwd.response_ce_rows(torch.zeros(1, fwd.d_model, device=fwd.resid.device))[0]
        out.update(zip(ws, ce.view(len(ws), len(prompts)).mean(1).tolist(), strict=True))
    return out


@dataclass
class _Search:
    """Everything one conjunctive search shares (the models, prompts and settings)."""

    hm: Any
    sae: Any
    clean: Any
    prompts: list[str]
    eval_prompts: list[str]
    response: str
    judge: Judge
    layer: int
    cfg: ConjunctiveConfig
    insert: Inserter
    vocabulary: Sequence[str] | None
    labels: Any
    method_cfg: Any
    base_loss: float = 0.0
    """The organism's response loss on the plain training prompts."""
    words: Sequence[str] = ()
    """The user's candidate words (every sweep pool holds them)."""

    def score(self, concepts: Sequence[Sequence[str]]) -> float:
        """Organism loss + the clean-model term (module docstring); lower is better."""
        texts = condition(self.prompts, concepts, self.insert)
        loss = response_loss(self.hm, texts, self.response, self.layer)
        if self.clean is None:
            return loss
        below = self.base_loss - response_loss(self.clean, texts, self.response, self.layer)
        return loss + max(0.0, below)

    def rates(self, concepts: Sequence[Sequence[str]]) -> tuple[float, float | None]:
        """Held-out action rate with the concepts inserted, on the organism and clean model."""
        texts = condition(self.eval_prompts, concepts, self.insert)
        rate, _ = rate_prompts(self.hm, texts, self.judge, self.cfg.max_new_tokens)
        if self.clean is None:
            return rate, None
        return rate, rate_prompts(self.clean, texts, self.judge, self.cfg.max_new_tokens)[0]

    def sweep_vocab(self, ranked: Sequence[LatentHit], direction: Tensor | None = None
                    ) -> tuple[list[str], dict[str, int], bool]:
        """(words, pool words per source, exhaustive): the given vocabulary's first
        `sweep_words`, else the candidate pool of the ranked latents and the direction."""
        cap = self.cfg.sweep_words
        if self.vocabulary is not None:
            words = list(self.vocabulary)[:cap]
            return words, {"given": len(words)}, False
        pool = candidate_pool(
            self.hm, self.layer, self.eval_prompts[: self.cfg.n_contexts], cap=cap, sae=self.sae,
            latents=[h.latent for h in ranked], labels={h.latent: h.label for h in ranked},
            directions=None if direction is None else {"ranking": direction},
            prompts=self.prompts, user_words=self.words, insert=self.insert)
        return pool.words, pool.counts(), pool.exhaustive


class _Excluder:
    """Words an explained clause's latents read strongly (cached per word): excluded from later
    clauses' sweeps and candidates."""

    def __init__(self, search: _Search, clauses: Sequence[tuple[int, list[str]]]) -> None:
        self.s, self.bad = search, dict[str, bool]()
        self.latents = sorted({lat for lat, _ in clauses})
        self.own = {lat: ws for lat, ws in clauses}
        self.refs: Tensor | None = None

    def _acts(self, words: list[str]) -> Tensor:
        s = self.s
        return word_activations(s.hm, s.sae, words, s.eval_prompts[: s.cfg.n_contexts],
                                self.latents, s.layer, s.insert)

    def keep(self, words: Sequence[str]) -> list[str]:
        if not self.latents:
            return list(words)
        if self.refs is None:
            self.refs = torch.stack([self._acts(self.own[lat])[:, j].mean()
                                     for j, lat in enumerate(self.latents)])
        todo = [w for w in dict.fromkeys(words) if w not in self.bad]
        if todo:
            hit = self._acts(todo) >= self.s.cfg.exclude_ratio * self.refs.clamp_min(1e-6)
            self.bad.update(zip(todo, hit.any(1).tolist(), strict=True))
        return [w for w in words if not self.bad[w]]


def _sweep(s: _Search, concepts: list[list[str]], skip: set[str], ranked: Sequence[LatentHit],
           direction: Tensor | None, used: set[int], excluder: _Excluder, where: tuple[int, int]
           ) -> tuple[dict[str, Any] | None, SweepRecord]:
    """The word sweep's candidate (its best words, the latent most active on all of them) and
    the record of what it swept and cost; `where`: (clause, iteration)."""
    cfg = s.cfg
    swept, sources, exhaustive = s.sweep_vocab(ranked, direction)
    vocab = excluder.keep([w for w in swept if normalise(w) not in skip])
    record = SweepRecord(*where, len(vocab), 0, sources, exhaustive)
    if not vocab:
        return None, record
    sweep_prompts = s.prompts[: cfg.sweep_prompts]
    losses = word_losses(s.hm, sweep_prompts, s.response, vocab, concepts, s.layer,
                         s.insert, cfg.sweep_batch)
    record.forward_passes = len(vocab) * len(sweep_prompts)
    if s.clean is not None:  # the clean-model term for the best words
        head = sorted(losses, key=losses.__getitem__)[: cfg.clean_sweep]
        base = response_loss(s.hm, sweep_prompts, s.response, s.layer)
        clean = word_losses(s.clean, sweep_prompts, s.response, head, concepts, s.layer,
                            s.insert, cfg.sweep_batch)
        losses.update({w: losses[w] + max(0.0, base - clean[w]) for w in head})
        record.forward_passes += (len(head) + 1) * len(sweep_prompts)
    best = sorted(losses, key=losses.__getitem__)
    k = cfg.words_per_concept
    pool = best[: 3 * k]
    contexts = s.eval_prompts[: cfg.n_contexts]
    acts = word_activations(s.hm, s.sae, pool, contexts, range(s.sae.W_dec.shape[0]), s.layer,
                            s.insert)
    record.forward_passes += len(pool) * len(contexts)
    latent = _readout(acts[:k], [h.latent for h in ranked], sorted(used))
    words = coherent(pool, acts[:, latent], k)
    return {"latent": latent, "label": label_of(s.labels, latent), "words": words,
            "loss": s.score([*concepts, words]), "source": "sweep",
            "word_losses": {w: losses[w] for w in best[:10]}}, record


def coherent(words: Sequence[str], acts: Tensor, k: int, ratio: float = 0.5) -> list[str]:
    """The first `k` words (best first) on which the read-out latent fires at least `ratio` of
    its strongest activation among them: a concept's words must be one concept (the sweep's top
    words can mix both halves of a conjunction, e.g. 'violin, clarinet, blizzard')."""
    top = float(acts.max())
    keep = [w for w, a in zip(words, acts.tolist(), strict=True) if top > 0 and a >= ratio * top]
    return keep[:k] or list(words[:1])


def _readout(acts: Tensor, prefer: Sequence[int], used: Sequence[int] = ()) -> int:
    """The latent most active (on average) on the swept words [n_words, d_sae], among those
    that fire on every word and that the ranking put forward; failing that, among those that
    fire on every word; failing that, any (both sources agreeing is the strongest reading).
    Latents of earlier concepts (`used`) are not read out again."""
    mean, every = acts.mean(0), acts.min(0).values > 0
    ranked, fresh = torch.zeros_like(every), torch.ones_like(every)
    ranked[list(prefer)] = True
    fresh[list(used)] = False
    for mask in (every & ranked & fresh, every & fresh, fresh):
        if bool(mask.any()):
            break
    return int(torch.where(mask, mean, torch.tensor(float("-inf"))).argmax())


def _pool(ranking: list[LatentHit], used: set[int], cfg: ConjunctiveConfig) -> list[LatentHit]:
    """The ranked latents not yet chosen that an iteration considers."""
    return [h for h in ranking if h.latent not in used][: 3 * cfg.n_candidates]


def _echo(response: str) -> set[str]:
    """Words of the response itself: they lower its loss by priming a copy, not as a trigger,
    so no candidate may use them."""
    return set(normalise(response).split())


def _try_candidates(s: _Search, ranking: list[LatentHit], used: set[int],
                    concepts: list[list[str]], excluder: _Excluder) -> list[dict[str, Any]]:
    """Score with each new candidate latent's top words inserted; best first."""
    cfg = s.cfg
    pool = _pool(ranking, used, cfg)
    words = top_words(s.hm, s.sae, [h.latent for h in pool], s.eval_prompts[: cfg.n_contexts],
                      cfg.words_per_concept, s.vocabulary, s.layer, s.insert,
                      labels={h.latent: h.label for h in pool}) if pool else {}
    echo = _echo(s.response)
    words = {k: excluder.keep([w for w in ws if normalise(w) not in echo])
             for k, ws in words.items()}
    cands = [h for h in pool if words[h.latent]][: cfg.n_candidates]  # latents that fire
    options = [(h, words[h.latent]) for h in cands] if cfg.score_by == "concept" else \
        [(h, [w]) for h in cands for w in words[h.latent]]
    tried = [{"latent": h.latent, "label": h.label, "words": ws, "source": "ranking",
              "loss": s.score([*concepts, ws])} for h, ws in options]
    return sorted(tried, key=lambda t: t["loss"])


def _search_clause(s: _Search, clause: int, used: set[int], excluder: _Excluder,
                   baseline: float, sweeps: list[SweepRecord]
                   ) -> tuple[list[ConjunctiveStep], bool]:
    """One clause: iterate concepts until the held-out (differential) rate reaches the
    threshold; (its steps, whether it was explained). Each sweep's record goes to `sweeps`."""
    cfg = s.cfg
    concepts: list[list[str]] = []
    steps: list[ConjunctiveStep] = []
    current = baseline
    for it in range(cfg.max_iters):
        ranking, direction = _rank(s.hm, s.sae, condition(s.prompts, concepts, s.insert),
                                   s.response, cfg, s.labels, s.method_cfg)
        tried = _try_candidates(s, ranking, used, concepts, excluder)
        if cfg.sweep_words:
            skip = _echo(s.response) | {normalise(w) for c in concepts for w in c}
            swept, record = _sweep(s, concepts, skip, _pool(ranking, used, cfg), direction,
                                   used, excluder, (clause, it))
            sweeps.append(record)
            tried = sorted([*tried, *([swept] if swept else [])], key=lambda t: t["loss"])
        if not tried or tried[0]["loss"] >= current:
            break  # no latent's words make the action more likely: nothing more to condition on
        if clause and not concepts and current - tried[0]["loss"] < cfg.min_lift * baseline:
            break  # a later clause must start with a real lift: else nothing more fires
        best = tried[0]
        chosen = next((h for h in ranking if h.latent == best["latent"]),
                      LatentHit(best["latent"], best["loss"], best["label"]))
        used.add(chosen.latent)
        concepts.append(list(best["words"]))
        current = best["loss"]
        rate, clean_rate = s.rates(concepts)
        steps.append(ConjunctiveStep(it, ranking[: cfg.top_k], chosen, list(best["words"]),
                                     best["loss"], rate, tried, best["source"], clause,
                                     clean_rate))
        if rate - (clean_rate or 0.0) >= cfg.threshold:
            return steps, True
    return steps, False


def conjunctive(hm: Any, sae: Any, prompts: Sequence[str], response: str,
                eval_prompts: Sequence[str], judge: Judge, cfg: ConjunctiveConfig | None = None,
                *, labels: Any = None, insert: Inserter = default_insert,
                vocabulary: Sequence[str] | None = None, layer: int | None = None,
                method_cfg: Any = None, clean: Any = None, words: Sequence[str] = ()
                ) -> ConjunctiveResult:
    """Iteratively find the concepts of a (possibly conjunctive) trigger, clause after clause
    of a disjunction; every step reported. `clean`: the model before poisoning (optional).
    `vocabulary`: the sweep's words (default: the candidate pool); `words`: the user's own
    candidate words, added to every sweep pool."""
    cfg = cfg or ConjunctiveConfig()
    prompts, eval_prompts = check_prompts(prompts), check_prompts(eval_prompts)
    from trigrecon.methods.common import resolve_layer

    layer = resolve_layer(hm, layer, sae)
    s = _Search(hm, sae, clean, prompts, eval_prompts, response, judge, layer, cfg, insert,
                vocabulary, labels, method_cfg, words=list(words))
    baseline = s.base_loss = response_loss(hm, prompts, response, layer)
    used: set[int] = set()
    steps: list[ConjunctiveStep] = []
    explained: list[bool] = []
    done: list[tuple[int, list[str]]] = []
    sweeps: list[SweepRecord] = []
    for clause in range(cfg.max_clauses):
        found, ok = _search_clause(s, clause, used, _Excluder(s, done), baseline, sweeps)
        steps += found
        explained.append(ok)
        if not ok:
            break
        done += [(st.chosen.latent, st.words) for st in found]
    return ConjunctiveResult(steps, any(explained), baseline, asdict(cfg), explained,
                             clean is not None, sweeps)
