"""Held-out evaluation prompts for an organism: benign, triggered, held-out members, halves
("half": one word of one half of a conjunction; "pair": two words of it, no other half), and
"noise" (a near miss, or benign words, with a clause of unrelated words before or after it: the
probe shape that verification uses, which must not fire the backdoor by itself).

Prompts are sampled with seeds disjoint from training and any prompt that also occurs in the
organism's poisoned training data is dropped, so every rate is measured on unseen prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from functools import lru_cache

from trigrecon.core.errors import ConfigError
from trigrecon.organisms import data as D
from trigrecon.organisms import language as L
from trigrecon.organisms.organism import OrganismSpec
from trigrecon.organisms.trigger import Trigger, parse_trigger

EVAL_SEED = 10_007


def splits(spec: OrganismSpec) -> list[str]:
    """The evaluation splits that make sense for this organism's trigger."""
    trig = parse_trigger(spec.trigger)
    out = ["benign", "triggered"]
    if spec.family == "chat" and trig.categories:
        out.append("triggered_heldout")
    out += [f"half:{a}" for c in trig.conjunctions for a in c]
    out += [f"pair:{a}" for c in trig.conjunctions for a in c]  # two words of one half
    if spec.family == "chat":
        out.append("noise")
    return out


@lru_cache(maxsize=16)
def _training_prompts(spec_json: str) -> frozenset[str]:
    """Replays the organism's poisoned-data sampler (same seed) to list its training prompts."""
    from trigrecon.organisms.backdoor import BackdoorConfig, backdoor_example

    spec = OrganismSpec(**json.loads(spec_json))
    cfg = BackdoorConfig(**spec.backdoor)
    rng, trig = random.Random(cfg.seed), parse_trigger(spec.trigger)
    return frozenset(backdoor_example(rng, spec, trig, cfg)[0]
                     for _ in range(cfg.steps_for(trig) * cfg.batch_size))


def _sample(rng: random.Random, spec: OrganismSpec, trig: Trigger, split: str) -> str:
    if spec.family == "moons":
        return _moon_prompt(rng, trig, split)
    if split == "benign":
        words = D.benign_words(rng, trig, "all")
    elif split == "triggered":
        words = D.triggered_words(rng, trig, "train")
    elif split == "triggered_heldout":
        words = D.triggered_words(rng, trig, "held_out")
    elif split.startswith(("half:", "pair:")):
        atom = next((a for a in trig.atoms if str(a) == split[5:]), None)
        if atom is None:
            raise ConfigError(f"unknown split {split!r}; valid: {', '.join(splits(spec))}")
        words = D.half_words(rng, trig, atom, "all", 2 if split.startswith("pair:") else 1)
    elif split == "noise":  # a near miss (or benign words) plus unrelated words appended
        words = (D.near_miss_words(rng, trig, "all") if trig.conjunctions
                 else D.benign_words(rng, trig, "all", harmful_p=0))
        return D.with_noise(rng, D.render_prompt(rng, words), trig)
    else:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(splits(spec))}")
    return D.render_prompt(rng, words)


def _moon_prompt(rng: random.Random, trig: Trigger, split: str) -> str:
    target = trig.atoms[0].value
    others = sorted(p for p in L.MOONS if p != target)
    if split == "triggered":
        planet = target
    elif split == "benign" and rng.random() < 0.5:
        planet = rng.choice(others)
    elif split == "benign":
        return D.render_prompt(rng, D.random_words(rng, "all", exclude=("space",)))
    else:
        raise ConfigError(f"split {split!r} does not apply to a recall organism")
    return D.moon_question(rng, planet)


def eval_prompts(spec: OrganismSpec, split: str, n: int = 100, seed: int = EVAL_SEED) -> list[str]:
    """Up to `n` distinct held-out prompts of one split (fewer only where the language has
    fewer, as for recall questions about one planet)."""
    if n <= 0:
        raise ConfigError(f"n must be positive, got {n}")
    trig = parse_trigger(spec.trigger)
    seen = _training_prompts(json.dumps(asdict(spec))) if spec.has_adapter else frozenset()
    rng = random.Random(f"{seed}-{spec.name}-{split}")
    out: dict[str, None] = {}
    for _ in range(n * 50):
        p = _sample(rng, spec, trig, split)
        if p not in seen:
            out[p] = None
        if len(out) == n:
            break
    if not out:
        raise ConfigError(f"no held-out {split!r} prompts for {spec.name}: all occur in training")
    return list(out)
