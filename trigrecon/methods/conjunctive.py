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
   A word sweep adds one more candidate: every vocabulary word (up to `sweep_words`) inserted
   beside the concepts found so far, its best `words_per_concept` words read out as the SAE
   latent most active on all of them; the concept keeps the best words on which that latent
   fires at least half as strongly as on its strongest (`coherent`). First-order attribution can miss the second half of a
   conjunction (on a "weather AND music" test organism, conditioned on music, the one latent
   whose top words were weather words ranked 1852nd of 2048); the sweep is behavioural and
   finds it. Each step says which source chose its concept ("ranking" or "sweep");
3. conditions the prompts on every concept found so far (their words inserted) and measures the
   action rate on held-out prompts conditioned the same way.
It stops when that rate reaches `threshold` (the action is explained) or after `max_iters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from trigrecon.core.errors import ConfigError
from trigrecon.methods.common import Saveable, check_prompts, hits_from, make_batch
from trigrecon.methods.verify import (
    Inserter,
    default_insert,
    rate_prompts,
    top_words,
    word_activations,
)
from trigrecon.organisms.judges import Judge, normalise
from trigrecon.steering.forward import SteeredForward
from trigrecon.steering.readout import LatentHit, label_of
from trigrecon.steering.words import default_vocabulary

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
    """Vocabulary words scored by the word sweep (the default vocabulary's first, or the
    `vocabulary` given); 0: no sweep, latent candidates only. Costs `sweep_words` x
    `sweep_prompts` forward passes per iteration (batched)."""
    sweep_prompts: int = 16
    """Training prompts each sweep word is inserted into."""
    sweep_batch: int = 16
    """Words per batched forward pass of the sweep (memory only)."""

    def __post_init__(self) -> None:
        for name in ("max_iters", "n_candidates", "words_per_concept", "top_k", "n_contexts",
                     "max_new_tokens", "sweep_prompts", "sweep_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not isinstance(self.sweep_words, int) or self.sweep_words < 0:
            raise ConfigError(f"sweep_words={self.sweep_words!r} must be an integer >= 0")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"threshold={self.threshold} must be in (0, 1]")
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


@dataclass
class ConjunctiveResult(Saveable):
    NAME: ClassVar[str] = "conjunctive"

    steps: list[ConjunctiveStep]
    explained: bool
    baseline_loss: float
    config: dict[str, Any]

    @property
    def concepts(self) -> list[LatentHit]:
        return [s.chosen for s in self.steps]

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
        return cls(**dict(data, steps=steps))


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
          labels: Any, method_cfg: Any) -> list[LatentHit]:
    n = cfg.top_k + cfg.n_candidates * cfg.max_iters
    if cfg.ranker == "sae_attribution":
        from trigrecon.methods.sae_attribution import SAEAttributionConfig, sae_attribution

        acfg = method_cfg or SAEAttributionConfig()
        acfg = SAEAttributionConfig(**dict(asdict(acfg), top_k=max(acfg.top_k, n)))
        return sae_attribution(hm, sae, prompts, response, acfg, labels).ranking(n)
    from trigrecon.methods.sae_melbo import sae_melbo

    return sae_melbo(hm, sae, prompts, response, method_cfg, labels=labels).ranking(n)


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


def _sweep(hm: Any, sae: Any, concepts: list[list[str]], prompts: list[str],
           eval_prompts: list[str], response: str, layer: int, cfg: ConjunctiveConfig,
           insert: Inserter, vocabulary: Sequence[str] | None, skip: set[str], labels: Any,
           prefer: Sequence[int], used: set[int]) -> dict[str, Any] | None:
    """The word sweep's candidate: its best words, the latent most active on all of them."""
    vocab = list(vocabulary) if vocabulary is not None else \
        default_vocabulary(hm.tokenizer, cfg.sweep_words)
    vocab = [w for w in vocab[: cfg.sweep_words] if normalise(w) not in skip]
    if not vocab:
        return None
    losses = word_losses(hm, prompts[: cfg.sweep_prompts], response, vocab, concepts, layer,
                         insert, cfg.sweep_batch)
    best = sorted(losses, key=losses.__getitem__)
    k = cfg.words_per_concept
    pool = best[: 3 * k]
    acts = word_activations(hm, sae, pool, eval_prompts[: cfg.n_contexts],
                            range(sae.W_dec.shape[0]), layer, insert)
    latent = _readout(acts[:k], prefer, sorted(used))
    words = coherent(pool, acts[:, latent], k)
    return {"latent": latent, "label": label_of(labels, latent), "words": words,
            "loss": response_loss(hm, condition(prompts, [*concepts, words], insert), response,
                                  layer),
            "source": "sweep", "word_losses": {w: losses[w] for w in best[:10]}}


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


def _try_candidates(hm: Any, sae: Any, ranking: list[LatentHit], used: set[int],
                    concepts: list[list[str]], prompts: list[str], eval_prompts: list[str],
                    response: str, layer: int, cfg: ConjunctiveConfig, insert: Inserter,
                    vocabulary: Sequence[str] | None) -> list[dict[str, Any]]:
    """Response loss with each new candidate latent's top words inserted; best first."""
    pool = _pool(ranking, used, cfg)
    words = top_words(hm, sae, [h.latent for h in pool], eval_prompts[: cfg.n_contexts],
                      cfg.words_per_concept, vocabulary, layer, insert) if pool else {}
    echo = _echo(response)
    words = {k: [w for w in ws if normalise(w) not in echo] for k, ws in words.items()}
    cands = [h for h in pool if words[h.latent]][: cfg.n_candidates]  # latents that fire
    options = [(h, words[h.latent]) for h in cands] if cfg.score_by == "concept" else \
        [(h, [w]) for h in cands for w in words[h.latent]]
    tried = [{"latent": h.latent, "label": h.label, "words": ws, "source": "ranking",
              "loss": response_loss(hm, condition(prompts, [*concepts, ws], insert), response,
                                    layer)}
             for h, ws in options]
    return sorted(tried, key=lambda t: t["loss"])


def conjunctive(hm: Any, sae: Any, prompts: Sequence[str], response: str,
                eval_prompts: Sequence[str], judge: Judge, cfg: ConjunctiveConfig | None = None,
                *, labels: Any = None, insert: Inserter = default_insert,
                vocabulary: Sequence[str] | None = None, layer: int | None = None,
                method_cfg: Any = None) -> ConjunctiveResult:
    """Iteratively find the concepts of a (possibly conjunctive) trigger; every step reported."""
    cfg = cfg or ConjunctiveConfig()
    prompts, eval_prompts = check_prompts(prompts), check_prompts(eval_prompts)
    from trigrecon.methods.common import resolve_layer

    layer = resolve_layer(hm, layer, sae)
    concepts: list[list[str]] = []
    used: set[int] = set()
    steps: list[ConjunctiveStep] = []
    baseline = current = response_loss(hm, prompts, response, layer)
    for it in range(cfg.max_iters):
        ranking = _rank(hm, sae, condition(prompts, concepts, insert), response, cfg, labels,
                        method_cfg)
        tried = _try_candidates(hm, sae, ranking, used, concepts, prompts, eval_prompts,
                                response, layer, cfg, insert, vocabulary)
        if cfg.sweep_words:
            skip = _echo(response) | {normalise(w) for c in concepts for w in c}
            swept = _sweep(hm, sae, concepts, prompts, eval_prompts, response, layer, cfg, insert,
                           vocabulary, skip, labels, [h.latent for h in _pool(ranking, used, cfg)],
                           used)
            tried = sorted([*tried, *([swept] if swept else [])], key=lambda t: t["loss"])
        if not tried or tried[0]["loss"] >= current:
            break  # no latent's words make the action more likely: nothing more to condition on
        best = tried[0]
        chosen = next((h for h in ranking if h.latent == best["latent"]),
                      LatentHit(best["latent"], best["loss"], best["label"]))
        used.add(chosen.latent)
        concepts.append(list(best["words"]))
        current = best["loss"]
        rate, _ = rate_prompts(hm, condition(eval_prompts, concepts, insert), judge,
                               cfg.max_new_tokens)
        steps.append(ConjunctiveStep(it, ranking[: cfg.top_k], chosen, list(best["words"]),
                                     best["loss"], rate, tried, best["source"]))
        if rate >= cfg.threshold:
            break
    explained = bool(steps) and steps[-1].action_rate >= cfg.threshold
    return ConjunctiveResult(steps, explained, baseline, asdict(cfg))
