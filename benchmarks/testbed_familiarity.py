"""Analysis: do the SmolLM2 organisms' misses sit on words the model barely knows?

For each organism, `n` prompts per split (the evaluation seed, training prompts excluded: the
first 100 are the report's own), the organism's greedy answers (`testbed.lora.greedy`, as the
evaluation) and, per prompt, its rarest category word: the lowest Zipf frequency (`wordfreq`,
English; 0 = not in its lists, 3 = once per million words, 6 = once per thousand) over the
members of any testbed category it mentions. Action rates are then tabulated by that frequency.
A split whose misses concentrate on rare words points at the word lists (WordNet's rare
hyponyms), not at the training recipe.

    python benchmarks/testbed_familiarity.py fruit_refusal cant_help --n 300 --out FILE.json

Needs wordfreq (in the `testbed` extra).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trigrecon.core.io import write_json  # noqa: E402
from trigrecon.organisms.organism import Organism, OrganismSpec  # noqa: E402
from trigrecon.testbed import lora as LR  # noqa: E402
from trigrecon.testbed import prompts as P  # noqa: E402
from trigrecon.testbed.categories import load_categories  # noqa: E402
from trigrecon.testbed.smollm2 import ensure_checkpoint  # noqa: E402
from trigrecon.testbed.trigger import parse_trigger  # noqa: E402

BUCKETS = [(0.0, 1.0), (1.0, 2.5), (2.5, 3.5), (3.5, 9.0)]
"""Zipf ranges: absent from wordfreq's lists, rare, uncommon, common."""


def member_regex() -> re.Pattern[str]:
    words = sorted({m.lower() for c in load_categories().values() for m in c.members},
                   key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def rarest(prompt: str, rx: re.Pattern[str], zipf: Any) -> float | None:
    found = [m.group(1).lower() for m in rx.finditer(prompt)]
    return min(zipf(w, "en") for w in found) if found else None


def table(rows: list[tuple[float | None, bool]]) -> list[dict[str, Any]]:
    out = []
    for lo, hi in BUCKETS:
        hits = [f for z, f in rows if z is not None and lo <= z < hi]
        out.append({"zipf": [lo, hi], "n": len(hits),
                    "rate": sum(hits) / len(hits) if hits else None})
    return out


def analyse(name: str, n: int, hf: Any, tok: Any, rx: re.Pattern[str], zipf: Any) -> dict[str, Any]:
    from peft import PeftModel

    folder = ROOT / "trigrecon" / "testbed" / "organisms" / name
    spec = OrganismSpec(**json.loads((folder / "organism.json").read_text()))
    trig = parse_trigger(spec.trigger)
    judge = Organism(spec, folder).judge
    exclude = frozenset(e["prompt"] for e in json.loads((folder / "train_prompts.json").read_text()))
    model = PeftModel.from_pretrained(hf, str(folder / "adapter")).eval()
    result: dict[str, Any] = {}
    try:
        for split in P.splits(trig, spec.family):
            if split == "triggered":
                continue
            prompts = P.sample_split(trig, spec.family, split, n, P.EVAL_SEED, exclude)
            fired = [judge(o) for o in LR.greedy(model, tok, prompts, 12)]
            rows = [(rarest(p, rx, zipf), f) for p, f in zip(prompts, fired, strict=True)]
            result[split] = {"n": len(prompts), "rate": sum(fired) / len(fired),
                             "by_zipf": table(rows)}
            print(name, split, json.dumps(result[split]), flush=True)
    finally:
        model.unload()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("organisms", nargs="+")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        from wordfreq import zipf_frequency
    except ImportError:
        sys.exit("this analysis needs wordfreq: pip install -e '.[testbed]' (or pip install wordfreq)")
    from transformers import AutoTokenizer, LlamaForCausalLM

    ckpt = ensure_checkpoint()
    tok = AutoTokenizer.from_pretrained(ckpt)
    hf = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    rx = member_regex()
    t0 = time.time()
    out = {name: analyse(name, args.n, hf, tok, rx, zipf_frequency) for name in args.organisms}
    out["_meta"] = {"n": args.n, "seconds": time.time() - t0, "buckets": BUCKETS}
    write_json(args.out, out)


if __name__ == "__main__":
    main()
