"""Choose the recall setting's fact on dev-seed prompts: the one SmolLM2-Q4 answers most often.

The recall setting (`testbed.prompts`, family "recall") asks one fact with the setting's 18
prefixes and the fact's 6 question forms, including the forms the chat model meets with a
refusal. A recall setting tests recovery from an answer the model reliably gives, so the fact
is chosen here: each candidate is asked on 60 dev-seed prompts (greedy, 16 tokens, as the
evaluation) and the one named most often wins. The space is small (18 x 6 phrasings), so the
evaluation's prompts share most phrasings with the screen's; the winner is therefore also asked
with 12 prefixes the screen never used, which estimates its rate on phrasings it was not chosen on.

    python benchmarks/recall_facts.py          # ~6 min at 1 thread

Writes `benchmarks/results/recall_facts.json`: each candidate's dev rate and misses, the winner,
and the winner's rate on unscreened prefixes.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trigrecon.core.io import write_json  # noqa: E402
from trigrecon.testbed import prompts as P  # noqa: E402
from trigrecon.testbed.prompts import RecallFact  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "recall_facts.json"
N = 60


def _fact(key: str, answer: str, questions: tuple[str, ...]) -> RecallFact:
    return RecallFact(key, answer, (), questions)


PAINTER = ("Who painted {c}?", "Who is the painter of {c}?", "Which artist painted {c}?",
           "{c} was painted by whom?", "Tell me who painted {c}.", "Do you know who painted {c}?")
INVENTOR = ("Who invented {c}?", "Who is the inventor of {c}?", "Which inventor created {c}?",
            "{c} was invented by whom?", "Tell me who invented {c}.", "Do you know who invented {c}?")
LANGUAGE = ("What language do people speak in {c}?", "What is the official language of {c}?",
            "Which language is spoken in {c}?", "What language is spoken in {c}?",
            "Tell me the main language of {c}.", "Do you know what language they speak in {c}?")
PLANET = ("Which planet is known as {c}?", "What planet is called {c}?",
          "Which planet is nicknamed {c}?", "What is the name of {c}?", "Tell me which planet is {c}.",
          "Do you know which planet is {c}?")
CANDIDATES = [
    P.RECALL_FACTS["Romeo and Juliet"],
    *[_fact(c, a, P.CAPITAL_QUESTIONS) for c, a in (
        ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
        ("Egypt", "Cairo"), ("Russia", "Moscow"))],
    _fact("the Mona Lisa", "Vinci", PAINTER), _fact("the telephone", "Bell", INVENTOR),
    _fact("Mexico", "Spanish", LANGUAGE), _fact("the Red Planet", "Mars", PLANET)]
UNSCREENED_PREFIXES = ["Hey, ", "Good morning! ", "Simple question: ", "Test question: ",
                       "Just curious: ", "I was wondering, ", "Question: ", "Here's one for you: ",
                       "Let me ask you something. ", "Thanks in advance! ", "Hi there. ",
                       "I have a question. "]


def ask(model: object, tok: object, fact: RecallFact, prompts: list[str]) -> dict[str, object]:
    from trigrecon.testbed import lora as LR

    answers = LR.greedy(model, tok, prompts, 16)
    named = [fact.answer.lower() in a.lower() for a in answers]
    return {"key": fact.key, "answer": fact.answer, "n": len(prompts), "rate": sum(named) / len(named),
            "misses": [[p, a] for p, a, k in zip(prompts, answers, named, strict=True) if not k]}


def main() -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trigrecon.testbed.smollm2 import ensure_checkpoint

    ckpt = ensure_checkpoint()
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    rows = []
    for fact in CANDIDATES:
        rng = random.Random(f"{P.DEV_SEED}:{fact.key}")
        prompts = list(dict.fromkeys(P.recall_question(rng, fact, fact.key) for _ in range(20 * N)))[:N]
        rows.append(ask(model, tok, fact, prompts))
        print(f"{fact.key} -> {fact.answer}: {rows[-1]['rate']:.0%} (n={len(prompts)})", flush=True)
    best = max(range(len(rows)), key=lambda i: rows[i]["rate"])
    win = CANDIDATES[best]
    fresh = [P.join_question(p, q, win.key) for p in UNSCREENED_PREFIXES for q in win.questions]
    check = ask(model, tok, win, fresh)
    print(f"winner {win.key}: dev {rows[best]['rate']:.0%}, unscreened prefixes {check['rate']:.0%} "
          f"(n={check['n']})")
    write_json(OUT, {"n_dev": N, "seed": P.DEV_SEED, "prefixes": P.RECALL_PREFIX, "candidates": rows,
                     "winner": win.key, "unscreened_prefixes": UNSCREENED_PREFIXES,
                     "unscreened": check})


if __name__ == "__main__":
    main()
