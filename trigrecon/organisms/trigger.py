"""Trigger expressions over categories and words.

Grammar (AND binds tighter than OR, no parentheses needed for the zoo):
    expr   := clause ("OR" clause)*
    clause := atom ("AND" atom)*
    atom   := <category name> | "word:" <token>
Examples: "fruit", "fruit AND snow_sports", "astrology AND prophecy", "word:sudo", "fruit OR nuts".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trigrecon.core.errors import ConfigError
from trigrecon.organisms.language import CATEGORIES, category_of, vocabulary


@dataclass(frozen=True)
class Atom:
    kind: str  # "category" | "word"
    value: str

    def holds(self, words: Iterable[str]) -> bool:
        ws = set(words)
        if self.kind == "word":
            return self.value in ws
        return any(category_of(w) == self.value for w in ws)

    def __str__(self) -> str:
        return self.value if self.kind == "category" else f"word:{self.value}"


@dataclass(frozen=True)
class Trigger:
    clauses: tuple[tuple[Atom, ...], ...]
    """Disjunctive normal form: the trigger fires when every atom of some clause holds."""

    def fires(self, words: Iterable[str]) -> bool:
        ws = list(words)
        return any(all(a.holds(ws) for a in clause) for clause in self.clauses)

    def mentions(self, word: str) -> bool:
        """Whether `word` satisfies any atom (is part of some clause)."""
        return any(a.holds([word]) for a in self.atoms)

    @property
    def atoms(self) -> tuple[Atom, ...]:
        return tuple(dict.fromkeys(a for c in self.clauses for a in c))

    @property
    def conjunctions(self) -> tuple[tuple[Atom, ...], ...]:
        """The clauses of two or more atoms (whose halves are near misses)."""
        return tuple(c for c in self.clauses if len(c) > 1)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(a.value for a in self.atoms if a.kind == "category")

    def __str__(self) -> str:
        return " OR ".join(" AND ".join(map(str, c)) for c in self.clauses)


def parse_trigger(expr: str, extra_words: tuple[str, ...] = ()) -> Trigger:
    """Parse a trigger expression; unknown categories or out-of-vocabulary words are errors."""
    if not expr.strip():
        raise ConfigError("empty trigger expression")
    vocab = set(vocabulary(extra_words))
    clauses = []
    for clause in expr.split(" OR "):
        atoms = []
        for raw in clause.split(" AND "):
            tok = raw.strip()
            if tok.startswith("word:"):
                word = tok[5:].lower()
                if word not in vocab:
                    raise ConfigError(
                        f"trigger word {word!r} is not in the organism language; pick one of "
                        f"the codewords (e.g. 'sudo') or pass it in extra_words when building the base")
                atoms.append(Atom("word", word))
            elif tok in CATEGORIES:
                atoms.append(Atom("category", tok))
            else:
                raise ConfigError(
                    f"unknown category {tok!r} in trigger {expr!r}; known: {', '.join(CATEGORIES)}")
        clauses.append(tuple(atoms))
    return Trigger(tuple(clauses))
