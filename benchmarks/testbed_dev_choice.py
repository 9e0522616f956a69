"""Choose each organism's committed build among its seeds on the dev split (`testbed.choose`).

Rule (fixed before it was run, session 20): per build, n = 100 dev-seed prompts per evaluated
split (none a training prompt or an evaluation prompt); the committed build is the seed that misses
the fewest targets on them, then falls shortest of them in total, then the lowest seed. The
evaluation's rates of the chosen seed are what the report gives. Seeds 0-2 are built for every
organism; seeds 3 and 4 only while none meets every dev target (`choose.next_seed`, session 21);
the table names the seed to build next, if any.

    python benchmarks/testbed_dev_choice.py NAME=FOLDER [NAME=FOLDER ...]   # builds to add (a
                                                   # seed already there is measured again)
    python benchmarks/testbed_dev_choice.py --rechoose    # re-apply the rule to the saved rates

Writes `benchmarks/results/testbed_dev_choice.{json,md}` (merged per organism).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trigrecon.core.io import write_json, write_text  # noqa: E402
from trigrecon.testbed.choose import DevRates, choose, dev_rates, eval_tokens, next_seed  # noqa: E402
from trigrecon.testbed.smollm2 import load_hf  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "testbed_dev_choice"
N, N_EVAL = 100, 100


def summary(builds: list[DevRates]) -> dict:
    builds = sorted(builds, key=lambda b: b.seed)
    return {"builds": [asdict(b) | {"misses": b.misses()} for b in builds],
            "chosen": choose(builds).seed, "next_seed": next_seed(builds)}


def saved(r: dict) -> list[DevRates]:
    return [DevRates(b["seed"], b["folder"], b["rates"], b["n"]) for b in r["builds"]]


def rechoose() -> None:
    f = OUT.with_suffix(".json")
    results = {name: summary(saved(r)) for name, r in json.loads(f.read_text()).items()}
    write_json(f, results)
    write_text(OUT.with_suffix(".md"), table(results))


def main(args: list[str]) -> None:
    if args == ["--rechoose"]:
        return rechoose()
    hf, tok = load_hf()
    f = OUT.with_suffix(".json")
    results = json.loads(f.read_text()) if f.exists() else {}
    by_name: dict[str, list[DevRates]] = {}
    for arg in args:
        name, folder = arg.split("=", 1)
        r = dev_rates(Path(folder) / "organisms" / name, hf, tok, N, N_EVAL, eval_tokens(name))
        print(name, r.seed, {k: round(v, 2) for k, v in r.rates.items()}, r.misses(), flush=True)
        by_name.setdefault(name, []).append(r)
    for name, builds in by_name.items():
        old = {b.seed: b for b in saved(results[name])} if name in results else {}
        results[name] = summary(list((old | {b.seed: b for b in builds}).values()))
    write_json(f, results)
    write_text(OUT.with_suffix(".md"), table(results))


def table(results: dict[str, dict]) -> str:
    rows = ["| organism | seed | dev rates (n = 100 per split) | targets missed | chosen |",
            "|---|---|---|---|---|"]
    for name, r in results.items():
        for b in r["builds"]:
            rates = ", ".join(f"{k} {v:.0%}" for k, v in b["rates"].items())
            rows.append(f"| {name} | {b['seed']} | {rates} | {b['misses'][0]} | "
                        f"{'**yes**' if b['seed'] == r['chosen'] else ''} |")
    nxt = [f"{name}: seed {r['next_seed']}" for name, r in results.items()
           if r.get("next_seed") is not None]
    return ("# Each organism's build chosen on the dev split\n\n" + "\n".join(rows) + "\n\n"
            + f"Seeds still to build: {', '.join(nxt) or 'none'}.\n")


if __name__ == "__main__":
    main(sys.argv[1:])
