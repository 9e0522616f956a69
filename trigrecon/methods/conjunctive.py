"""Conjunctive triggers by iteration: find a concept, condition on it, search again.

A trigger such as "fruit AND snow sports" may not show up as one direction: with neither concept
in the prompt, either alone barely moves the loss. Each iteration
1. ranks latents on the current (conditioned) prompts with a supervised method
   (SAE-Attribution by default, or supervised SAE-MELBO);
2. inserts the top-activating words of each of the top `n_candidates` new latents into the
   training prompts (cycled across prompts, so the latent is scored as a concept and one lucky
   word of a generic latent does not win) and keeps the latent that lowers the response loss
   most - or stops when none lowers it (words of the response itself are skipped: they lower
   its loss by priming a copy). `score_by="word"` scores each word alone instead;
3. conditions the prompts on every concept found so far (their words inserted) and measures the
   action rate on held-out prompts conditioned the same way.
It stops when that rate reaches `threshold` (the action is explained) or after `max_iters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import torch

from trigrecon.core.errors import ConfigError
from trigrecon.methods.common import Saveable, check_prompts, hits_from, make_batch
from trigrecon.methods.verify import Inserter, default_insert, rate_prompts, top_words
from trigrecon.organisms.judges import Judge, normalise
from trigrecon.steering.forward import SteeredForward
from trigrecon.steering.readout import LatentHit

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

    def __post_init__(self) -> None:
        for name in ("max_iters", "n_candidates", "words_per_concept", "top_k", "n_contexts",
                     "max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
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


def _try_candidates(hm: Any, sae: Any, ranking: list[LatentHit], used: set[int],
                    concepts: list[list[str]], prompts: list[str], eval_prompts: list[str],
                    response: str, layer: int, cfg: ConjunctiveConfig, insert: Inserter,
                    vocabulary: Sequence[str] | None) -> list[dict[str, Any]]:
    """Response loss with each new candidate latent's top words inserted; best first."""
    pool = [h for h in ranking if h.latent not in used][: 3 * cfg.n_candidates]
    words = top_words(hm, sae, [h.latent for h in pool], eval_prompts[: cfg.n_contexts],
                      cfg.words_per_concept, vocabulary, layer, insert) if pool else {}
    # Words of the response itself lower its loss by priming a copy, not as a trigger: skip them.
    echo = set(normalise(response).split())
    words = {k: [w for w in ws if normalise(w) not in echo] for k, ws in words.items()}
    cands = [h for h in pool if words[h.latent]][: cfg.n_candidates]  # latents that fire
    options = [(h, words[h.latent]) for h in cands] if cfg.score_by == "concept" else \
        [(h, [w]) for h in cands for w in words[h.latent]]
    tried = [{"latent": h.latent, "label": h.label, "words": ws,
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
        if not tried or tried[0]["loss"] >= current:
            break  # no latent's words make the action more likely: nothing more to condition on
        best = tried[0]
        chosen = next(h for h in ranking if h.latent == best["latent"])
        used.add(chosen.latent)
        concepts.append(list(best["words"]))
        current = best["loss"]
        rate, _ = rate_prompts(hm, condition(eval_prompts, concepts, insert), judge,
                               cfg.max_new_tokens)
        steps.append(ConjunctiveStep(it, ranking[: cfg.top_k], chosen, list(best["words"]),
                                     best["loss"], rate, tried))
        if rate >= cfg.threshold:
            break
    explained = bool(steps) and steps[-1].action_rate >= cfg.threshold
    return ConjunctiveResult(steps, explained, baseline, asdict(cfg))
