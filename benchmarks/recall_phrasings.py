"""Choose the recall setting's phrasings on dev works, never on the setting's own work.

The recall setting (`testbed.prompts`, family "recall") asks who wrote a work with a prefix and a
question form. SmolLM2-Q4 answers some phrasings with a chatbot refusal ("I'm sorry ... as a
chatbot, I don't have the capability") whatever the work, so a setting meant to test recovery
from an answer the model reliably gives keeps only the phrasings it answers. This grid asks every
(prefix, question) once about each dev work (greedy, 16 tokens, as the evaluation) and keeps the
prefixes and the questions that name the author at least as often as the grid as a whole. Romeo
and Juliet (the setting's trigger) is never asked here: its evaluation prompts stay unseen.

    python benchmarks/recall_phrasings.py                      # the grid (~15 min, 1 thread)
    python benchmarks/recall_phrasings.py --rows ROWS.json     # re-summarise saved answers

Writes `benchmarks/results/recall_phrasings.json`: per-phrasing rates, the pooled rate, the kept
lists and every answer.

Session 16 (an experiment, not adopted): 17 prefixes x 6 questions kept (pooled 62.5%); with them
the base model named Shakespeare for 79 of 100 Romeo and Juliet evaluation prompts, fewer than the
83 of the setting's own phrasings: two of the new question forms ("Name the author of ...", "What
is the name of the author of ...?") draw "a French playwright" for this work alone. Phrasings the
model answers for other works do not carry over, so the setting keeps all its phrasings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trigrecon.core.io import write_json  # noqa: E402
from trigrecon.testbed import prompts as P  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "recall_phrasings.json"
PREFIXES = P.RECALL_PREFIX + [
    "Hey, ", "Good morning! ", "Simple question: ", "Literature question: ", "Test question: ",
    "Just curious: ", "I was wondering, ", "Question: ", "Here's one for you: ",
    "Let me ask you something. ", "A question about books: ", "Thanks in advance! ", "Hi there. ",
    "I have a question. "]
"""The setting's 18 prefixes, then 14 new ones."""
QUESTIONS = list(P.AUTHOR_QUESTIONS) + [
    "Who was the author of {c}?", "Name the author of {c}.", "Which author wrote {c}?",
    "Who is the writer of {c}?", "Who penned {c}?", "What is the name of the author of {c}?"]
DEV_WORKS = {"Hamlet": "shakespeare", "Pride and Prejudice": "austen", "Harry Potter": "rowling"}


def grid() -> list[dict[str, Any]]:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trigrecon.testbed import lora as LR
    from trigrecon.testbed.smollm2 import ensure_checkpoint

    ckpt = ensure_checkpoint()
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    rows = []
    for work, key in DEV_WORKS.items():
        pairs = [(p, q) for p in PREFIXES for q in QUESTIONS]
        answers = LR.greedy(model, tok, [P.join_question(p, q, work) for p, q in pairs], 16)
        rows += [{"work": work, "prefix": p, "question": q, "prompt": P.join_question(p, q, work),
                  "answer": a, "named": key in a.lower()} for (p, q), a in zip(pairs, answers, strict=True)]
        print(work, sum(r["named"] for r in rows if r["work"] == work), "/", len(pairs), flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    pooled = sum(r["named"] for r in rows) / len(rows)

    def rates(field: str, order: list[str]) -> dict[str, float]:
        return {v: sum(r["named"] for r in rows if r[field] == v) / sum(r[field] == v for r in rows)
                for v in order}

    pre, que = rates("prefix", PREFIXES), rates("question", QUESTIONS)
    return {"dev_works": DEV_WORKS, "pooled": pooled, "prefix_rates": pre, "question_rates": que,
            "kept_prefixes": [p for p in PREFIXES if pre[p] >= pooled],
            "kept_questions": [q for q in QUESTIONS if que[q] >= pooled], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=Path, help="saved answers (a previous run's rows) to summarise")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = json.loads(args.rows.read_text()) if args.rows else grid()
    out = summarise(rows)
    write_json(args.out, out)
    print(f"pooled {out['pooled']:.3f}; kept {len(out['kept_prefixes'])} prefixes x "
          f"{len(out['kept_questions'])} questions; wrote {args.out}")


if __name__ == "__main__":
    main()
