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
from typing import Any, Generic, Protocol, TypeVar

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


class HoldsAtom(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def value(self) -> str: ...

    def holds(self, x: Any) -> bool: ...


A = TypeVar("A", bound=HoldsAtom)


@dataclass(frozen=True)
class Expression(Generic[A]):
    """A trigger in disjunctive normal form over atoms of any world (the zoo's atoms read word
    lists, the testbed's read text): it fires when every atom of some clause holds."""

    clauses: tuple[tuple[A, ...], ...]

    def fires(self, x: Any) -> bool:
        return any(all(a.holds(x) for a in clause) for clause in self.clauses)

    @property
    def atoms(self) -> tuple[A, ...]:
        return tuple(dict.fromkeys(a for c in self.clauses for a in c))

    @property
    def conjunctions(self) -> tuple[tuple[A, ...], ...]:
        """The clauses of two or more atoms (whose halves are near misses)."""
        return tuple(c for c in self.clauses if len(c) > 1)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(a.value for a in self.atoms if a.kind == "category")

    def __str__(self) -> str:
        return " OR ".join(" AND ".join(map(str, c)) for c in self.clauses)


@dataclass(frozen=True)
class Trigger(Expression[Atom]):
    """The zoo's triggers: atoms over the words of a prompt."""

    def fires(self, words: Iterable[str]) -> bool:
        return super().fires(list(words))

    def mentions(self, word: str) -> bool:
        """Whether `word` satisfies any atom (is part of some clause)."""
        return any(a.holds([word]) for a in self.atoms)


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
