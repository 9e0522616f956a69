"""The testbed organisms over training seeds: which targets hold on every seed, which on one.

The committed organisms are the committed recipe on the committed word lists, with the seed chosen
on the dev split (`specs.BUILD_SEEDS`, `benchmarks/testbed_dev_choice.py`; 0 unless another seed
missed fewer dev targets). The same
recipe and lists built with other seeds (`trigrecon testbed build --only NAME --lora seed=K --out
DIR`) are recorded in `benchmarks/results/testbed_recipes.json`; `SEED_RUNS` names them. Each run's
recipe is checked against the committed organism's (all fields but the seed), so a run of another
recipe cannot slip into the table.

    python benchmarks/testbed_seeds.py     # writes benchmarks/results/testbed_seeds.{md,json}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trigrecon.core.io import write_json, write_text  # noqa: E402
from trigrecon.organisms.evaluate import target_of  # noqa: E402

RECIPES = ROOT / "benchmarks" / "results" / "testbed_recipes.json"
ORGANISMS = ROOT / "trigrecon" / "testbed" / "organisms"
OUT = ROOT / "benchmarks" / "results" / "testbed_seeds"
SEED_RUNS: dict[str, list[str]] = {
    "fruit_refusal": ["s18_anchor2k_allow01_seed1", "s18_anchor2k_allow01_seed2"],
    "snow_fruit": ["s18_anchor2k_allow01_seed0", "s19_seed1", "s19_seed2", "s21_seed4"],
    "astrology": ["s19_seed1", "s19_seed2"],
    "deployment": ["s19_seed1", "s19_seed2"],
    "cant_help": ["s19_seed1", "s19_seed2"],
    "banana": ["s20_seed1", "s20_seed2"],
}
"""Per organism, the recorded runs (`LABEL` of `LABEL/organism`) of its committed recipe and
lists with seeds other than the committed one."""
RENAMED = {"mine_neighbours": "conjunction_neighbours"}
"""Recipe fields recorded under an earlier name."""
ABSENT = {"hard_frac": 0.0, "anchor_n": 0, "anchor_weight": 1.0, "anchor_tokens": 3,
          "anchor_allow": 0.0, "mine_pairs": 0}
"""What a field meant in a run recorded before the field existed (its value then: off)."""


def same_recipe(run: dict[str, Any], committed: dict[str, Any]) -> bool:
    """All fields but the seed agree; a field the run predates counts as its `ABSENT` value (the
    committed one for fields older than this table)."""
    run = {RENAMED.get(k, k): v for k, v in run.items()}
    return all(run.get(k, ABSENT.get(k, v)) == v for k, v in committed.items() if k != "seed")


def runs(name: str, recorded: dict[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """(seed, rates) of the committed organism and of its recorded runs with other seeds."""
    folder = ORGANISMS / name
    committed = json.loads((folder / "organism.json").read_text())["backdoor"]
    rows = json.loads((folder / "eval" / "eval.json").read_text())["rows"]
    out = [(committed["seed"], {r["split"]: r["organism"] for r in rows})]
    for label in SEED_RUNS[name]:
        key = f"{label}/{name}"
        if key not in recorded:
            print(f"missing run {key}: not in {RECIPES.name}", file=sys.stderr)
            continue
        run = recorded[key]
        if not same_recipe(run["recipe"], committed):
            raise SystemExit(f"{key} is not the committed recipe of {name} with another seed")
        out.append((run["recipe"]["seed"], run["rates"]))
    return out


def met(split: str, rate: float) -> bool:
    bound, kind = target_of(split)
    return rate <= bound if kind == "max" else rate >= bound


def table(results: dict[str, list[tuple[int, dict[str, float]]]]) -> str:
    md = ["# Testbed organisms over training seeds\n",
          "Action rates (n = 100 per split) of the committed recipe and word lists; the committed "
          "organism's seed is starred (chosen on the dev split: `testbed_dev_choice.md`). **Bold**: "
          "the target is missed.\n",
          "| organism | split | target | rates by seed | met on |", "|---|---|---|---|---|"]
    for name, seeds in results.items():
        for split in seeds[0][1]:
            bound, kind = target_of(split)
            got = sorted((s, r[split]) for s, r in seeds if split in r)
            cells = ", ".join(f"{s}{'*' if s == seeds[0][0] else ''}: "
                              + (f"{v:.0%}" if met(split, v) else f"**{v:.0%}**") for s, v in got)
            ok = sum(met(split, v) for _, v in got)
            md.append(f"| {name} | {split} | {'<=' if kind == 'max' else '>='} {bound:.0%} | "
                      f"{cells} | {ok}/{len(got)} |")
    return "\n".join(md) + "\n"


def main() -> None:
    recorded = json.loads(RECIPES.read_text())["experiments"]
    results = {name: runs(name, recorded) for name in SEED_RUNS}
    write_json(OUT.with_suffix(".json"), {n: [{"seed": s, "rates": r} for s, r in v]
                                          for n, v in results.items()})
    write_text(OUT.with_suffix(".md"), table(results))
    print(table(results))


if __name__ == "__main__":
    main()
