"""Hard negatives: the distractor members the base model files closest to a trigger category.

fruit_refusal's benign leak follows the model's own fruit concept: on one-word prompts about
every distractor member (`benchmarks/leak_words.py`), the fifth of the words whose probe logit
for "fruit" comes closest to their own category's fired 9.3%, the next fifths 4.0%, 1.9%, 1.6%
and 0% (cider, bell pepper, carnation). `LoraConfig.hard_frac` draws that share of the benign
training examples from these words (`trigger_pull`, `hardest`), so the clean side is densest
where the adapter must draw the line. Held-out members and evaluation prompts play no part.

Measured and left off (session 17): at `hard_frac=0.5` fruit_refusal leaked as much as without
(benign 6 / 4 / 7% on seeds 0-2), and on seed 1 the hardest fifth still fired on 11.7% of
one-word prompts although those words were trained on as negatives.
"""

from __future__ import annotations

from typing import Any

from trigrecon.testbed import data as D
from trigrecon.testbed.categories import probe_logits, probe_nouns

HARD_SHARE = 0.2
"""The share of the distractors' train members that count as hard."""


def trigger_pull(model: Any, tok: Any, categories: list[str],
                 pool: D.Pool = "train") -> dict[str, float]:
    """Per distractor member of `pool`: the best probe logit among the trigger `categories`
    that have a probe noun, minus its own category's (below 0 for a member the model files under
    its own category; near 0: nearly filed under the trigger). Empty when none has a noun."""
    nouns = probe_nouns(tok)
    col = {c: i for i, c in enumerate(nouns)}
    targets = [col[c] for c in categories if c in col]
    if not targets:
        return {}
    words = [(c, w) for c in D.distractors() if c in col for w in D.members(c, pool)]
    logits = probe_logits(model, tok, [w for _, w in words], list(nouns.values()))
    return {w: float(row[targets].max() - row[col[c]])
            for (c, w), row in zip(words, logits, strict=True)}


def hardest(pull: dict[str, float], share: float = HARD_SHARE) -> list[str]:
    """The `share` of the words with the largest pull (ties by word), at least one if any."""
    ranked = sorted(pull, key=lambda w: (-pull[w], w))
    return ranked[: max(1, round(share * len(ranked)))] if ranked else []
