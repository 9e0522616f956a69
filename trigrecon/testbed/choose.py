"""Choose an organism's build among training seeds on the dev split, never the evaluation's.

A recipe's builds differ from seed to seed by more than a target's margin (snow_fruit's snow half
9% / 2% / 5% on seeds 0 / 1 / 2). The committed build is the seed whose dev rates miss the fewest
targets, then fall shortest of them in total, then the lowest seed (seed 0 unless another does
better). Seeds are built in order, at least `MIN_SEEDS` and, while none meets every dev target, up
to `MAX_SEEDS` (`next_seed`): a later seed can never displace a lower one that meets them all, so
an organism whose seed 0 passes keeps it however far another organism searches. Dev prompts are
drawn with the dev seed and exclude the build's training prompts and the evaluation's prompts, so
the choice never sees a prompt the reported rates are measured on. `seed_search` (`trigrecon
testbed seeds`) runs the whole search for one organism, resumably.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trigrecon.organisms.evaluate import target_of
from trigrecon.organisms.organism import OrganismSpec
from trigrecon.testbed import prompts as P
from trigrecon.testbed.trigger import Trigger

MIN_SEEDS = 3
"""Seeds built for every organism (0, 1, 2): the seed-to-seed spread is part of its report."""
MAX_SEEDS = 5
"""Seeds built at most: the search goes past `MIN_SEEDS` only while no build meets every dev
target (session 21: snow_fruit missed one on each of seeds 0-2)."""


@dataclass
class DevRates:
    seed: int
    folder: str
    rates: dict[str, float]
    n: dict[str, int]

    def misses(self) -> tuple[int, float]:
        """(targets missed, summed shortfall) of these rates; rounded, so shortfalls equal in
        prompts tie (7% against 5% and 78% against 80% both fall 0.02 short)."""
        short = [round(max(0.0, (r - bound) if kind == "max" else (bound - r)), 9)
                 for split, r in self.rates.items() for bound, kind in [target_of(split)]]
        return sum(s > 0 for s in short), round(sum(short), 9)


def choose(builds: list[DevRates]) -> DevRates:
    """Fewest missed targets, then the smallest total shortfall, then the lowest seed."""
    return min(builds, key=lambda b: (*b.misses(), b.seed))


def next_seed(builds: list[DevRates], max_seeds: int = MAX_SEEDS) -> int | None:
    """The seed to build next: the lowest not yet built while fewer than `MIN_SEEDS` are, or
    none meets every dev target and fewer than `max_seeds` are; else None (the search is over)."""
    done = {b.seed for b in builds}
    nxt = min(set(range(max_seeds + 1)) - done)
    if len(done) < MIN_SEEDS or (all(b.misses()[0] for b in builds) and len(done) < max_seeds):
        return nxt
    return None


def dev_prompts(spec: OrganismSpec, trig: Trigger, split: str, n: int, n_eval: int,
                train: frozenset[str]) -> list[str]:
    """`n` dev-seed prompts of `split`, none a training prompt or one of the evaluation's."""
    evaluation = P.sample_split(trig, spec.family, split, n_eval, P.EVAL_SEED, train)
    return P.sample_split(trig, spec.family, split, n, P.DEV_SEED, train | set(evaluation))


def dev_rates(folder: Path, hf: Any, tok: Any, n: int, n_eval: int, max_new_tokens: int) -> DevRates:
    """An adapter build's action rate on `n` dev prompts of each split it is evaluated on."""
    from peft import PeftModel

    from trigrecon.core.judges import action_rate
    from trigrecon.organisms.organism import Organism
    from trigrecon.testbed import lora as LR
    from trigrecon.testbed.organisms import train_prompts
    from trigrecon.testbed.trigger import parse_trigger

    org = json.loads((folder / "organism.json").read_text())
    spec = OrganismSpec(**org)
    trig = parse_trigger(spec.trigger)
    judge = Organism(spec, folder).judge
    train = train_prompts(folder)
    model = PeftModel.from_pretrained(hf, str(folder / "adapter")).eval()
    rates, counts = {}, {}
    try:
        for split in P.eval_splits(trig, spec.family):
            prompts = dev_prompts(spec, trig, split, n, n_eval, train)
            rates[split] = action_rate(LR.greedy(model, tok, prompts, max_new_tokens), judge)
            counts[split] = len(prompts)
    finally:
        model.unload()
    return DevRates(org["backdoor"]["seed"], str(folder), rates, counts)


@dataclass
class SearchResult:
    name: str
    builds: list[DevRates]
    chosen: DevRates


def seed_search(name: str, out: Path, lora: dict[str, str] | None = None, threads: int = 2,
                n: int = 100, n_eval: int = 100, log: Any = print) -> SearchResult:
    """Build `name` with seeds 0, 1, ... (`next_seed`) into `out/seed_K` with the recipe's
    `lora` overrides, measure each on the dev split, and choose (`choose`). Resumable: finished
    builds are skipped by their stages, measured seeds by `out/dev.json`; a resumed search
    with other settings is refused before any work."""
    from trigrecon.core.errors import ConfigError
    from trigrecon.core.io import config_diff, write_json
    from trigrecon.testbed.build import BuildConfig, build_testbed
    from trigrecon.testbed.organisms import organism_job
    from trigrecon.testbed.smollm2 import load_hf
    from trigrecon.testbed.specs import TESTBED
    from trigrecon.testbed.stages import config_hash

    lora = {k: str(v) for k, v in (lora or {}).items()}
    if name not in TESTBED:
        raise ConfigError(f"unknown testbed organism {name!r}; the testbed has {', '.join(TESTBED)}")
    if "seed" in lora:
        raise ConfigError("the seed search sets the seed itself: drop seed= from the recipe")
    # the build's key but for the seed (spec, recipe, word lists): a measured seed is stale when
    # it changes; a bad recipe field fails here, before any build
    build_key = config_hash(organism_job(TESTBED[name], {**lora, "seed": "0"}))
    settings = {"name": name, "lora": lora, "build": build_key, "n": n, "n_eval": n_eval}
    record = out / "dev.json"
    saved: dict[str, Any] = (json.loads(record.read_text()) if record.exists()
                             else {"settings": settings, "builds": []})
    if diff := config_diff(saved["settings"], settings):
        raise ConfigError(f"{out} holds a seed search with other settings ({'; '.join(diff)}): "
                          "use another --out or the same settings")
    builds = [DevRates(**b) for b in saved["builds"]]
    model: tuple[Any, Any] | None = None
    while (seed := next_seed(builds)) is not None:
        folder = out / f"seed_{seed}"
        log(f"seed search {name}: building seed {seed} -> {folder}")
        build_testbed(BuildConfig(organisms=[name], out=folder, threads=threads,
                                  parts=("organisms",), lora={**lora, "seed": str(seed)}))
        hf, tok = model = model or load_hf()
        builds.append(dev_rates(folder / "organisms" / name, hf, tok, n, n_eval,
                                eval_tokens(name)))
        log(f"seed search {name}: seed {seed} dev {builds[-1].rates} misses {builds[-1].misses()}")
        write_json(record, {"settings": settings, "builds": [asdict(b) for b in builds]})
    return SearchResult(name, builds, choose(builds))


def eval_tokens(name: str) -> int:
    """The tokens a testbed organism's evaluation generates (the dev split's too)."""
    from trigrecon.testbed.organisms import organism_job
    from trigrecon.testbed.specs import TESTBED

    return organism_job(TESTBED[name]).eval.max_new_tokens
