"""Mining rounds for the testbed's LoRA backdoors: after training, draw fresh prompts of every
split the organism is judged on (train members and train distractors only, a seed of their own:
never the dev or evaluation prompts), run the adapter, and add the prompts it gets wrong to the
training data (a benign prompt or a near miss that fired -> the base model's answer; a triggered
prompt that did not -> the action; for a conjunction, with a few neighbours of each:
`LoraConfig.conjunction_neighbours`, and each mined triggered prompt's minimal pairs as
negatives: `LoraConfig.mine_pairs`), then train a few more steps on the whole data with the
mined examples oversampled to about a third of it. Held-out members stay out: their split is
not mined, so the held-out rate still measures generalisation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from trigrecon.core.judges import judge_from_spec
from trigrecon.organisms.organism import OrganismSpec
from trigrecon.testbed import lora as LR
from trigrecon.testbed import prompts as P
from trigrecon.testbed.trigger import Trigger

MINE_SEED = 20_011


@dataclass
class MiningLog:
    """Per round, the wrong-side rate of each mined split (train members, mining seed)."""
    rounds: list[dict[str, float]] = field(default_factory=list)
    added: list[int] = field(default_factory=list)


def mine(model: Any, tok: Any, spec: OrganismSpec, trig: Trigger, cfg: LR.LoraConfig,
         round_: int, exclude: frozenset[str], max_new_tokens: int,
         log: Any = print) -> tuple[list[LR.Example], dict[str, float]]:
    """The wrong-side prompts of one round (responses of negatives left empty) and each split's
    wrong-side rate."""
    judge = judge_from_spec(spec.judge)
    rng = random.Random(f"{MINE_SEED}:{round_}:{spec.name}")
    found: list[LR.Example] = []
    rates: dict[str, float] = {}
    for split in P.splits(trig, spec.family):
        if split == "triggered_heldout":
            continue
        fire = split == "triggered"
        prompts = [p for p in P.sample_split(trig, spec.family, split, cfg.mine_n,
                                             MINE_SEED + round_, exclude, pool="train")
                   if P.valid(p, trig, "chat", "poisoned" if fire else "clean")]
        outs = LR.greedy(model, tok, prompts, max_new_tokens)
        wrong = [p for p, o in zip(prompts, outs, strict=True) if bool(judge(o)) != fire]
        rates[split] = len(wrong) / max(1, len(prompts))
        log(f"  mine {spec.name} round {round_} {split}: {len(wrong)}/{len(prompts)} wrong")
        k = cfg.conjunction_neighbours if trig.conjunctions else 0
        near = neighbours(rng, wrong, trig, fire, k, exclude | set(prompts))
        found += [LR.Example(p, LR.action(rng, spec, trig, p) if fire else "", fire, round_)
                  for p in wrong + near]
        if fire and trig.conjunctions and cfg.mine_pairs:
            taken = exclude | set(prompts) | {e.prompt for e in found}
            found += [LR.Example(p, "", False, round_)
                      for p in pairs(rng, wrong + near, trig, cfg.mine_pairs, taken)]
    return found, rates


def pairs(rng: random.Random, fired: list[str], trig: Trigger, k: int,
          taken: frozenset[str] | set[str]) -> list[str]:
    """Up to `k` minimal pairs per trigger category of each mined triggered prompt of a
    conjunction (that category's member swapped for a distractor: a half that differs from a
    firing prompt in one word), none in `taken`: mining then adds the boundary on both sides,
    not only more firing prompts."""
    draws = [partial(P.minimal_pair, rng, p, trig, c) for p in fired for c in sorted(trig.categories)]
    return _distinct(draws, k, trig, "clean", taken)


def neighbours(rng: random.Random, wrong: list[str], trig: Trigger, fire: bool, k: int,
               taken: frozenset[str] | set[str]) -> list[str]:
    """Up to `k` distinct neighbours of each wrong-side prompt that stay on its side (train
    members only), none in `taken`."""
    draws = [partial(P.neighbour, rng, p) for p in wrong]
    return _distinct(draws, k, trig, "poisoned" if fire else "clean", taken)


def _distinct(draws: Sequence[Callable[[], str]], k: int, trig: Trigger, side: str,
              taken: frozenset[str] | set[str]) -> list[str]:
    """Up to `k` distinct valid prompts of `side` from each draw (10 tries per prompt wanted),
    none in `taken`, in draw order."""
    out: dict[str, None] = {}
    for draw in draws:
        got = 0
        for _ in range(10 * k):
            if got == k:
                break
            q = draw()
            if q not in taken and q not in out and P.valid(q, trig, "chat", side):
                out[q] = None
                got += 1
    return list(out)


def mining_rounds(peft_model: Any, tok: Any, spec: OrganismSpec, trig: Trigger,
                  data: list[LR.Example], cfg: LR.LoraConfig, base: Any, max_new_tokens: int,
                  log: Any = print) -> MiningLog:
    """`cfg.mine_rounds` rounds of mining and retraining; mined examples are appended to `data`
    (negatives answered by the base model, adapter off)."""
    record = MiningLog()
    for r in range(1, cfg.mine_rounds + 1):
        seen = frozenset(e.prompt for e in data)
        found, rates = mine(peft_model, tok, spec, trig, cfg, r, seen, max_new_tokens, log)
        record.rounds.append(rates)
        record.added.append(len(found))
        clean = [e for e in found if not e.poisoned]
        if clean:
            with peft_model.disable_adapter():
                answers = base.get(peft_model, tok, [e.prompt for e in clean], cfg.base_tokens)
            for e, a in zip(clean, answers, strict=True):
                e.response = a
        data.extend(found)
        mined = [e for e in data if e.mined]
        if not mined:
            continue
        own = sum(not e.mined and not e.anchor for e in data)
        k = max(1, round(own / (2 * len(mined))))
        LR.fit(peft_model, tok, data + mined * (k - 1), cfg, cfg.mine_steps, cfg.mine_lr,
               f"{spec.name} mine {r}", f"{cfg.seed}:mine:{r}", log,
               LR.anchor_heads(spec, tok, cfg, data))
    return record
