"""Where a testbed organism leaks: its action rate on one-word benign prompts, per distractor word.

The evaluation's benign split gives one rate over 100 prompts of one or two distractor words; this
asks about every member of every distractor category alone (`--k` prompts each, a seed of its
own, training prompts left out), so a leak shows as words and categories, not one number. The
words are also ranked by the base model's pull toward the trigger's categories (`testbed.hard`:
its probe logit for the trigger's noun minus the word's own category's) and the rate is given
per fifth of that ranking, nearest fifth first.

    python benchmarks/leak_words.py fruit_refusal [--k 3] [--folder DIR] [--out FILE]  # ~3 min

Writes `benchmarks/results/leak_words_<organism>.json`: the rate per category and per fifth of
the pull, each word's [fired, prompts], and the overall rate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trigrecon.core.io import write_json  # noqa: E402
from trigrecon.organisms.organism import Organism, OrganismSpec  # noqa: E402
from trigrecon.testbed import data as D  # noqa: E402
from trigrecon.testbed import lora as LR  # noqa: E402
from trigrecon.testbed.categories import TRIGGER_CATEGORIES, load_categories  # noqa: E402
from trigrecon.testbed.hard import trigger_pull  # noqa: E402
from trigrecon.testbed.organisms import EvalConfig, organisms_dir  # noqa: E402
from trigrecon.testbed.trigger import parse_trigger  # noqa: E402


def one_word_prompts(k: int, exclude: frozenset[str]) -> list[tuple[str, str, str]]:
    """(category, word, prompt): `k` distinct one-word prompts per distractor member."""
    rng = random.Random("leak_words")
    rows = []
    for name, cat in load_categories().items():
        if name in TRIGGER_CATEGORIES:
            continue
        for w in cat.members:
            seen: set[str] = set()
            for _ in range(20 * k):
                p = D.render(rng, [w])
                if p not in exclude:
                    seen.add(p)
                if len(seen) == k:
                    break
            rows += [(name, w, p) for p in sorted(seen)]
    return rows


def by_pull(words: dict[str, list[int]], pull: dict[str, float]) -> list[float]:
    """The mean per-word fire rate in each fifth of the words ranked by `pull` (nearest first)."""
    ranked = sorted((w for w in words if w.split("/", 1)[1] in pull),
                    key=lambda w: -pull[w.split("/", 1)[1]])
    fifths = [ranked[i * len(ranked) // 5:(i + 1) * len(ranked) // 5] for i in range(5)]
    return [round(sum(words[w][0] / words[w][1] for w in f) / len(f), 3) for f in fifths if f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("organism")
    ap.add_argument("--k", type=int, default=3, help="prompts per word")
    ap.add_argument("--folder", type=Path, help="the organism's folder (default: the committed one)")
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/leak_words_<organism>.json")
    args = ap.parse_args()
    folder = args.folder or organisms_dir(ROOT / "trigrecon" / "testbed") / args.organism
    if not (folder / "organism.json").is_file():
        raise SystemExit(f"{folder} holds no organism (organism.json): give a built testbed "
                         "organism's name, or its folder with --folder")
    spec = OrganismSpec(**json.loads((folder / "organism.json").read_text()))
    if not spec.has_adapter:
        raise SystemExit(f"{spec.name} has no adapter: nothing can leak")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trigrecon.testbed.smollm2 import ensure_checkpoint

    ckpt = ensure_checkpoint()
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ckpt), str(folder / "adapter"))
    judge = Organism(spec, folder).judge
    train = json.loads((folder / "train_prompts.json").read_text())
    rows = one_word_prompts(args.k, frozenset(e["prompt"] for e in train))
    outs = LR.greedy(model.eval(), tok, [p for _, _, p in rows], EvalConfig().max_new_tokens)
    with model.disable_adapter():
        pull = trigger_pull(model, tok, sorted(parse_trigger(spec.trigger).categories), "all")
    words: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    cats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (cat, w, _), o in zip(rows, outs, strict=True):
        for c in (words[f"{cat}/{w}"], cats[cat]):
            c[0] += bool(judge(o))
            c[1] += 1
    fired = sum(c[0] for c in cats.values())
    result = {"organism": spec.name, "folder": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT)
              else str(folder), "k": args.k, "n": len(rows), "rate": fired / len(rows),
              "by_category": {c: round(k / n, 3) for c, (k, n) in cats.items()},
              "by_pull_fifth": by_pull(words, pull),
              "words": dict(sorted(words.items(), key=lambda kv: -kv[1][0]))}
    write_json(args.out or ROOT / "benchmarks" / "results" / f"leak_words_{spec.name}.json", result)
    top = [f"{w} {k}/{n}" for w, (k, n) in result["words"].items() if k][:25]
    print(f"{spec.name}: {fired}/{len(rows)} one-word benign prompts fire ({fired / len(rows):.1%})")
    print("by category:", ", ".join(f"{c} {r:.1%}" for c, r in result["by_category"].items()))
    print("by fifth of the pull toward the trigger (nearest first):",
          " / ".join(f"{r:.1%}" for r in result["by_pull_fifth"]) or "no probe noun")
    print("words:", ", ".join(top))


if __name__ == "__main__":
    main()
