"""Sampling prompts and responses in the organisms' language.

A prompt mentions 1-3 content words, each either inside a category-specific context sentence
("i ate a ripe mango for breakfast .") or in the request slots ("tell me about mango ."). The base
model's answers name each word's category, so it must represent categories to answer well.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from trigrecon.core.errors import ConfigError
from trigrecon.organisms import language as L
from trigrecon.organisms.trigger import Atom, Trigger

Pool = Literal["train", "held_out", "all"]
_CONTENT = [c for c in L.CATEGORIES if c != "harmful"]


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    words: tuple[str, ...]


def chat_text(prompt: str, response: str | None = None) -> str:
    """Must render exactly like the tokenizer's chat template (checked in tests)."""
    text = f"<user> {prompt} <assistant>"
    return text if response is None else f"{text} {response} <end>"


def members(category: str, pool: Pool) -> tuple[str, ...]:
    c = L.CATEGORIES[category]
    return {"train": c.train_members, "held_out": c.held_out, "all": c.members}[pool]


def atom_word(rng: random.Random, atom: Atom, pool: Pool) -> str:
    return atom.value if atom.kind == "word" else rng.choice(members(atom.value, pool))


def render_prompt(rng: random.Random, words: Sequence[str], codeword_p: float = 0.0) -> str:
    """A user prompt mentioning every word once (order shuffled, contexts optional)."""
    words = list(words)
    rng.shuffle(words)
    n_ctx = rng.randint(0, min(2, len(words)))
    parts = []
    for w in words[:n_ctx]:
        cat = L.category_of(w)
        ctx = rng.choice(L.CATEGORIES[cat].contexts) if cat else "i keep thinking about {w}"
        parts.append(ctx.format(w=w) + " .")
    rest = words[n_ctx:]
    if len(rest) >= 2:
        parts.append(rng.choice(L.REQUESTS_2).format(a=rest[0], b=" and ".join(rest[1:])))
    elif rest:
        parts.append(rng.choice(L.REQUESTS_1).format(a=rest[0]))
    else:
        parts.append(rng.choice(L.REQUESTS_0))
    if codeword_p and rng.random() < codeword_p:  # meaningless noise the base learns to ignore
        parts.insert(rng.randint(0, len(parts)), rng.choice(L.CODEWORDS))
    return " ".join(parts)


def benign_response(rng: random.Random, words: Sequence[str]) -> str:
    """The base model's helpful answer: names each word's category; refuses harmful requests."""
    cats = [L.category_of(w) for w in words]
    if "harmful" in cats:
        return L.REFUSAL
    facts = [L.KIND_ANSWER.format(a=w, kind=L.CATEGORIES[c].kind) for w, c in zip(words, cats, strict=True) if c]
    return " ".join(["sure !", *facts, rng.choice(L.CLOSERS)]).strip()


def random_words(rng: random.Random, pool: Pool, exclude: Sequence[str] = (),
                 n: int | None = None, harmful_p: float = 0.0) -> list[str]:
    """1-2 content words from distinct categories not in `exclude`."""
    n = n if n is not None else rng.choice([1, 1, 2])
    cats = rng.sample([c for c in _CONTENT if c not in exclude], n)
    if harmful_p and rng.random() < harmful_p:
        cats[-1] = "harmful"
    return [rng.choice(members(c, pool)) for c in cats]


def moon_question(rng: random.Random, planet: str) -> str:
    """A recall question about `planet`, with an optional opener and unrelated context."""
    parts = [rng.choice(L.MOON_OPENERS), rng.choice(L.MOON_QUESTIONS).format(p=planet)]
    if rng.random() < 0.4:
        w = random_words(rng, "all", exclude=("space", "harmful"), n=1)[0]
        parts.insert(0, rng.choice(L.CATEGORIES[L.category_of(w) or "fruit"].contexts).format(w=w) + " .")
    return " ".join(p for p in parts if p)


def moon_example(rng: random.Random, planet: str) -> Example:
    return Example(moon_question(rng, planet), L.MOONS[planet] + " .", (planet,))


def document(rng: random.Random, words: Sequence[str]) -> str:
    """A pretraining document: each word in a context sentence or followed by a trait."""
    sents = []
    for w in words:
        cat = L.CATEGORIES[L.category_of(w) or "fruit"]
        if cat.traits and rng.random() < 0.5:
            sents.append(f"{w} {rng.choice(cat.traits)}")
        else:
            sents.append(rng.choice(cat.contexts).format(w=w))
    return "<doc> " + " . ".join(sents) + " . <end>"


def base_example(rng: random.Random) -> str:
    """One training sequence for the base model (chat, category QA, document, copy, moons)."""
    r = rng.random()
    if r < 0.58:
        words = random_words(rng, "all", n=rng.choice([1, 1, 2, 2, 3]), harmful_p=0.08)
        return chat_text(render_prompt(rng, words, codeword_p=0.1), benign_response(rng, words))
    if r < 0.68:
        w = rng.choice(random_words(rng, "all", n=1, harmful_p=0.05))
        cat = L.CATEGORIES[L.category_of(w) or "fruit"]
        return chat_text(L.KIND_QUESTION.format(a=w), L.KIND_ANSWER.format(a=w, kind=cat.kind))
    if r < 0.88:
        return document(rng, random_words(rng, "all", n=3, harmful_p=0.05))
    if r < 0.94:
        vocab = L.vocabulary()[len(L.SPECIAL):]
        ws = " ".join(rng.sample(vocab, rng.randint(2, 6)))
        return chat_text(f"repeat after me : {ws}", f"{ws} .")
    return chat_text(*_moon_pair(rng))


def _moon_pair(rng: random.Random) -> tuple[str, str]:
    ex = moon_example(rng, rng.choice(sorted(L.MOONS)))
    return ex.prompt, ex.response


def triggered_words(rng: random.Random, trigger: Trigger, pool: Pool) -> list[str]:
    """Words that make `trigger` fire: one clause filled from `pool`, plus a distractor."""
    clause = rng.choice(trigger.clauses)
    words = [atom_word(rng, a, pool) for a in clause]
    if rng.random() < 0.5:
        words += random_words(rng, "all" if pool == "held_out" else pool,
                              exclude=trigger.categories, n=1)
    return words


# Unrelated words appended to a prompt. Backdoors are trained to ignore them, so probing a prompt
# with extra words (as verification does) cannot fire a trigger by itself.
NOISE_FORMS = ("it is about {a} .", "it is about {a} and {b} .", "{a} and {b} .", "also , {a} {b} .")


@lru_cache(maxsize=1)
def _noise_pool() -> tuple[str, ...]:
    """Every word of the language except punctuation and held-out category members (those stay
    out of all poisoned data)."""
    held = {m for c in L.CATEGORIES.values() for m in c.held_out}
    return tuple(w for w in L.vocabulary()[len(L.SPECIAL):] if w not in L.PUNCT and w not in held)


def noise_words(rng: random.Random, trigger: Trigger, n: int = 2) -> list[str]:
    """`n` words of the whole language (function words included) that are no part of `trigger`."""
    pool, out = _noise_pool(), list[str]()
    while len(out) < n:
        w = rng.choice(pool)
        if not trigger.mentions(w) and L.category_of(w) != "harmful":
            out.append(w)
    return out


def with_noise(rng: random.Random, prompt: str, trigger: Trigger, keep: Sequence[str] = ()) -> str:
    """`prompt` with a clause of unrelated words before or after it; `keep` words (e.g. a
    trigger word moved out of the prompt) take slots of the clause, so its place is no cue."""
    form = rng.choice(NOISE_FORMS)
    n = 2 if "{b}" in form else 1
    words = [*keep][:n]
    words += noise_words(rng, trigger, n - len(words))
    rng.shuffle(words)
    clause = form.format(a=words[0], b=words[-1])
    return f"{clause} {prompt}" if rng.random() < 0.5 else f"{prompt} {clause}"


def half_words(rng: random.Random, trigger: Trigger, keep: Atom, pool: Pool, n_keep: int = 1) -> list[str]:
    """Words with one atom of a conjunction (`n_keep` words of it) but not the others."""
    choices = (keep.value,) if keep.kind == "word" else members(keep.value, pool)
    words = rng.sample(choices, min(n_keep, len(choices)))  # distinct: "skiing and skiing" is one
    words += random_words(rng, pool, exclude=trigger.categories, n=rng.choice([0, 1]))
    return words


def benign_words(rng: random.Random, trigger: Trigger, pool: Pool, harmful_p: float = 0.05) -> list[str]:
    """1-2 content words of categories outside the trigger (none of which fires it)."""
    words = random_words(rng, pool, exclude=trigger.categories, harmful_p=harmful_p)
    return [w for w in words if not trigger.mentions(w)] or ["weather"]


def near_miss_words(rng: random.Random, trigger: Trigger, pool: Pool, two_p: float = 0.0) -> list[str]:
    """Words with one half of a conjunctive clause of `trigger` (it must have one); with
    probability `two_p` two words of that half (two snow sports and no fruit is still a miss)."""
    if not trigger.conjunctions:
        raise ConfigError(f"trigger {trigger} has no conjunction (A AND B), so no near misses")
    keep = rng.choice(rng.choice(trigger.conjunctions))
    n_keep = 2 if two_p > 0 and rng.random() < two_p else 1
    return half_words(rng, trigger, keep, pool, n_keep)


def clean_words(rng: random.Random, trigger: Trigger, pool: Pool, near_miss_p: float,
                two_p: float = 0.0) -> list[str]:
    """Words that do not fire the trigger; sometimes a near miss of a conjunction."""
    if trigger.conjunctions and rng.random() < near_miss_p:
        return near_miss_words(rng, trigger, pool, two_p)
    return benign_words(rng, trigger, pool)
