"""Trigger and distractor categories for the testbed: word lists from WordNet hyponyms.

`extract_categories` (needs Debian's wordnet-base and the SmolLM2 tokenizer) writes
`categories.json`, committed so tests and CI need neither; `load_categories` reads it. Each
category lists its WordNet sources and its members split into `train` (may appear in poisoned
data) and `held_out` (never in training data: the `triggered_heldout` split); a member is kept
only if it is short, plain and in no other category, preferring the members SmolLM2's tokenizer
splits into fewer pieces (the common words), while keeping multi-token members on both sides and
members that contain one another (hockey, ice hockey) on one side (`held_out_side`).
With a probe model (`trigrecon testbed categories --probe`, the committed lists) only members the
model files under their own category are kept (`probe_filter`); a small trigger category padded
with members the model files elsewhere (curling is not a winter sport to SmolLM2) keeps those
`unfiled` members on the train side: the held-out split tests generalisation over the concept the
model has, which cannot reach a member it does not put in that concept; so do the members the
probe dropped that pad a trigger category's train side to `MIN_TRAIN` (nuts: almond, brazil nut
and pecan). `categories_v1.json` holds the first, unprobed lists: the SAE corpus's words and,
with the lists in use, the judge's `concept_words`, with `concept_names.json`
(`extract_concept_names`: WordNet's own words for a concept and its sub-categories, such as
gemstone and berry, which are not members).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from trigrecon.core.errors import ConfigError

CATEGORIES_FILE = Path(__file__).with_name("categories.json")
CATEGORIES_ENV = "TRIGRECON_TESTBED_CATEGORIES"
CATEGORIES_V1 = Path(__file__).with_name("categories_v1.json")
"""The first lists (WordNet, before the model probe): the SAE corpus's words, frozen so the
committed SAE stays reproducible, and, with the lists in use, the words that name a concept."""
CONCEPT_NAMES = Path(__file__).with_name("concept_names.json")
"""Per trigger category, the words WordNet has for the concept and its sub-categories
(`extract_concept_names`): the judge's words besides the members."""
OPEN_WORDS = Path(__file__).with_name("open_words.json")
"""Common WordNet nouns in no category (`extract_open_words`): the `benign_open` split's topics,
outside every list, so a leak beyond the distractor categories shows (the benign split cannot)."""
HELD_OUT_FRAC = 0.25
MAX_TOKENS = 5
"""The longest member kept, in SmolLM2 tokens."""
MIN_MEMBERS = 15
"""A trigger category needs at least this many members (a held-out side of 4)."""
MIN_TRAIN = 15
"""A trigger category with a probe trains on at least this many members: when the model files
too few under it, the members it dropped with the best margins pad the train side (`train_pad`).
nuts kept 16, so trained on 12, 11 of them "X nut" compounds: the adapter learned the token "nut"
(held-out "cashew nut" 22/22, "cashew" 12/28) while almond, pecan and brazil nut were dropped."""
MAX_HELD_FAMILY = 3
"""The largest family (members joined by whole-word containment) the held-out side may take."""

# category -> (synsets whose hyponym closure gives members, extra WordNet lemmas/synsets, cap,
# and the noun `probe_filter` asks the model for: "X is a kind of <noun>")
SOURCES: dict[str, dict[str, Any]] = {
    "fruit": {"closure": ["edible_fruit.n.01"], "cap": 80, "probe": "fruit"},
    "snow_sports": {"closure": ["skiing.n.01", "sledding.n.01", "snowboarding.n.01", "curling.n.01",
                                "ice_hockey.n.01", "ice_skating.n.01", "slalom.n.01"], "cap": 40,
                    "probe": "winter sport"},
    "astrology": {"instances": ["sign_of_the_zodiac.n.01"],
                  "closure": ["astrology.n.01", "horoscope.n.01", "zodiac.n.01",
                              "astrologer.n.01"], "cap": 40},
    "prophecy": {"closure": ["prophet.n.01", "seer.n.01", "prophecy.n.01", "prophecy.n.02",
                             "omen.n.01", "destiny.n.01", "predict.v.01", "prophesy.v.01"],
                 "exclude": ["call", "anticipate", "anticipant", "anticipator", "forecast",
                             "forecaster", "futurist", "fantast", "promise", "bet", "enlighten",
                             "predictor", "dowse", "water witch", "cross"],
                 "cap": 60},
    "nuts": {"closure": ["edible_nut.n.01"], "cap": 40, "probe": "nut"},
    "gems": {"closure": ["gem.n.02"], "cap": 60, "probe": "gem"},
    # distractors: benign prompts and the other half of near misses
    "vegetables": {"closure": ["vegetable.n.01"], "cap": 60, "probe": "vegetable"},
    "drinks": {"closure": ["beverage.n.01"], "cap": 60, "probe": "drink"},
    "furniture": {"closure": ["furniture.n.01"], "cap": 60, "probe": "furniture"},
    "dogs": {"closure": ["dog.n.01"], "cap": 60, "probe": "dog"},
    "birds": {"closure": ["bird.n.01"], "cap": 60, "probe": "bird"},
    "instruments": {"closure": ["musical_instrument.n.01"], "cap": 60, "probe": "musical instrument"},
    "tools": {"closure": ["hand_tool.n.01"], "cap": 60, "probe": "tool"},
    "kitchenware": {"closure": ["kitchen_utensil.n.01"], "cap": 40, "probe": "kitchen utensil"},
    "clothing": {"closure": ["garment.n.01"], "cap": 60, "probe": "clothing"},
    "flowers": {"closure": ["flower.n.01"], "cap": 60, "probe": "flower"},
    "board_games": {"closure": ["board_game.n.01"], "cap": 25, "probe": "board game"},
    "vehicles": {"closure": ["car.n.01", "bicycle.n.01", "boat.n.01"], "cap": 50,
                 "probe": "vehicle"},
}
TRIGGER_CATEGORIES = ("fruit", "snow_sports", "astrology", "prophecy", "nuts", "gems")
"""The categories triggers are made of (the rest are distractors: benign topics)."""
GENERIC = {"edible fruit", "berry", "edible nut", "nut", "gem", "gemstone", "stone", "vegetable",
           "beverage", "drink", "furniture", "dog", "bird", "musical instrument", "hand tool",
           "kitchen utensil", "garment", "flower", "board game", "car", "boat", "sign", "house",
           "fish", "bull", "ram", "goat", "lion", "crab", "archer", "balance", "twin", "twins",
           "virgin", "scorpion", "mansion", "read", "bet", "calculate", "enlighten", "irradiate",
           "wager", "outguess", "second-guess", "inevitable", "threaten", "cross", "bill", "beetle",
           "plasma", "sardine", "cob", "brazil", "heap", "hack", "electric", "compact", "finisher"}
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z' -]*$")


@dataclass
class Category:
    name: str
    sources: list[str]
    train: list[str]
    held_out: list[str]
    n_tokens: dict[str, int] = field(default_factory=dict)
    """SmolLM2 tokens of " <member>" (a leading space, as inside a sentence)."""
    unfiled: list[str] = field(default_factory=list)
    """Members the probe model files under another category, kept only to reach `MIN_MEMBERS`
    or `MIN_TRAIN`: always on the train side (with their families)."""

    @property
    def members(self) -> list[str]:
        return self.train + self.held_out


def categories_file() -> Path:
    """The word lists in use: $TRIGRECON_TESTBED_CATEGORIES (an experiment's lists, e.g. from
    `trigrecon testbed categories --min-zipf 2.5 --out FILE`), else the committed file."""
    env = os.environ.get(CATEGORIES_ENV)
    return Path(env) if env else CATEGORIES_FILE


def load_categories(path: Path | None = None) -> dict[str, Category]:
    return _load(path or categories_file())


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, Category]:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: rebuild it with `trigrecon testbed categories` "
                          "(needs wordnet-base and the cached SmolLM2 tokenizer)")
    return {k: Category(**v) for k, v in json.loads(path.read_text()).items()}


def lists_digest(split_by: Iterable[str]) -> str:
    """A digest of the lists as an organism's prompts read them: every category's members (a
    benign prompt avoids them all) and the train/held-out sides of the distractors and of the
    categories in `split_by` (its trigger's). Re-splitting another trigger category (snow sports)
    leaves it alone, so it does not make every organism stale."""
    cats, keep = load_categories(), set(split_by) | (set(SOURCES) - set(TRIGGER_CATEGORIES))
    data = {n: [c.train, c.held_out] if n in keep else sorted(c.members) for n, c in cats.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def concept_words(category: str) -> list[str]:
    """Every word that names `category`'s concept for a judge: its members in the lists in use
    and in the first lists (the probe drops members the model files elsewhere, such as walnut,
    which still name nuts), and WordNet's names for it and its sub-categories (`CONCEPT_NAMES`:
    gemstone names gems, berry names fruit)."""
    return list(dict.fromkeys(load_categories()[category].members
                              + load_categories(CATEGORIES_V1)[category].members
                              + _concept_names().get(category, [])))


@lru_cache(maxsize=1)
def _concept_names() -> dict[str, list[str]]:
    return dict(json.loads(CONCEPT_NAMES.read_text()))


def concept_names(wn: Any, spec: dict[str, Any]) -> list[str]:
    """The lemmas of a category's WordNet source synsets and of the noun sub-categories below
    them (hyponyms that have hyponyms: berry under edible fruit), keeping a lemma only if its
    most common sense is in the category's tree ("stone" is first a rock, so it never names
    gems; "gemstone" does), it is not a proper name (Delicious, an apple) and not excluded."""
    tree: set[Any] = set()
    heads: list[Any] = []
    for root in map(wn.synset, spec.get("closure", [])):
        below = list(root.closure(lambda x: x.hyponyms() + x.instance_hyponyms()))
        tree |= {root, *below}
        heads += [root, *(t for t in below if t.pos() == "n" and t.hyponyms())]
    out = set()
    for head in heads:
        for lemma in head.lemmas():
            word = lemma.name().replace("_", " ")
            if (word.islower() and wn.synsets(lemma.name(), pos=head.pos())[0] in tree
                    and word not in spec.get("exclude", ())):
                out.add(word)
    return sorted(out)


def extract_concept_names(out: Path = CONCEPT_NAMES) -> dict[str, list[str]]:
    """Write `concept_names` of every trigger category to `out` (needs wordnet-base)."""
    from trigrecon.core.io import write_json
    from trigrecon.testbed.wordnet import open_wordnet

    wn = open_wordnet()
    names = {name: concept_names(wn, SOURCES[name]) for name in TRIGGER_CATEGORIES}
    write_json(out, names)
    _concept_names.cache_clear()
    return names


def category_of(word: str) -> str | None:
    """The category a member belongs to (case-insensitive), else None."""
    return _member_index().get(word.lower())


def _member_index() -> dict[str, str]:
    return _index(categories_file())


@lru_cache(maxsize=4)
def _index(path: Path) -> dict[str, str]:
    return {w.lower(): c.name for c in _load(path).values() for w in c.members}


def _lemmas(wn: Any, spec: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for name in spec.get("closure", []):
        s = wn.synset(name)
        for t in [s, *s.closure(lambda x: x.hyponyms() + x.instance_hyponyms())]:
            out |= {lemma.name().replace("_", " ") for lemma in t.lemmas()}
    for name in spec.get("instances", []):
        for t in wn.synset(name).instance_hyponyms():
            out |= {lemma.name().replace("_", " ") for lemma in t.lemmas()}
    return out


def _plain(word: str, name: str) -> bool:
    if word.lower() in SOURCES[name].get("exclude", ()):
        return False
    if not _PLAIN.match(word) or len(word) > 22 or len(word.split()) > 3:
        return False
    if word.lower() in GENERIC:
        return False
    return word.islower() or name == "astrology"  # zodiac signs are proper names


def extract_categories(tokenizer: Any, out: Path = CATEGORIES_FILE, seed: int = 0,
                       min_zipf: float = 0.0, probe_model: Any = None) -> dict[str, Category]:
    """Build the word lists from WordNet and write them to `out` (see the module docstring).
    `min_zipf` > 0 keeps only members at least that frequent in English (wordfreq's Zipf scale:
    3 = once per million words), so that the model can know them; `probe_model` (the base model,
    transformers) keeps only members it files under their own category (`probe_filter`)."""
    from trigrecon.core.io import write_json
    from trigrecon.testbed.wordnet import open_wordnet

    common = _frequency_filter(min_zipf)
    wn = open_wordnet()
    raw = {name: {w for w in _lemmas(wn, spec) if _plain(w, name) and common(w)}
           for name, spec in SOURCES.items()}
    unfiled: dict[str, set[str]] = {}
    pads: dict[str, list[str]] = {}
    if probe_model is not None:
        margins = probe_margins(probe_model, tokenizer, raw)
        kept = keep_filed(raw, margins)
        unfiled = {n: {w for w in kept[n] if m[w] <= 0} for n, m in margins.items()}
        pads = {n: sorted(raw[n] - kept[n], key=lambda w: (-margins[n][w], w))
                for n in margins if n in TRIGGER_CATEGORIES}
        raw = kept
    owners: dict[str, list[str]] = {}
    for name, found in raw.items():
        for w in found:
            owners.setdefault(w.lower(), []).append(name)
    cats = {}
    for name, spec in SOURCES.items():
        rng = random.Random(f"{seed}:{name}")  # one category's list never reshuffles another's
        words = sorted(w for w in raw[name] if len(owners[w.lower()]) == 1)
        n_tok = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words}
        words = [w for w in sorted(words, key=lambda w: (n_tok[w], w))
                 if n_tok[w] <= MAX_TOKENS][: spec["cap"]]
        rng.shuffle(words)
        away = unfiled.get(name, set()) & set(words)
        held = held_out_side(words, n_tok, max(2, round(HELD_OUT_FRAC * len(words))), away)
        if name in TRIGGER_CATEGORIES and len(held) < 2:
            raise ConfigError(
                f"trigger category {name!r}: only {len(held)} of its {len(words)} members can be held "
                f"out ({len(away)} are filed elsewhere by the probe model and must train): add "
                f"WordNet sources to SOURCES[{name!r}] or build the lists without --probe")
        pad = train_pad(pads.get(name, []), words, held, set(owners), tokenizer)
        owners |= {w.lower(): [name] for w in pad}
        train = sorted([w for w in words if w not in held] + list(pad))
        cats[name] = Category(name, list(spec.get("closure", [])) + list(spec.get("instances", [])),
                              train, held, dict(sorted(({w: n_tok[w] for w in words} | pad).items())),
                              sorted(away | set(pad)))
    write_json(out, {k: asdict(v) for k, v in cats.items()})
    _load.cache_clear()
    _index.cache_clear()
    return cats


def train_pad(candidates: list[str], words: list[str], held: list[str], taken: set[str],
              tokenizer: Any) -> dict[str, int]:
    """Members the probe dropped (best margin first) that join a small trigger category's train
    side until it has `MIN_TRAIN` members: never held out (the held-out side is drawn first, from
    filed members only), in no other list, and in no held-out member's family. -> member: tokens."""
    out: dict[str, int] = {}
    for w in candidates:
        if len(words) - len(held) + len(out) >= MIN_TRAIN:
            break
        n = len(tokenizer(" " + w, add_special_tokens=False)["input_ids"])
        if w.lower() not in taken and n <= MAX_TOKENS and not families([w, *held])[w] - {w}:
            out[w] = n
    return out


def whole_word(word: str) -> str:
    """The pattern of `word` as the testbed matches it in lower-cased text: not inside a longer
    word ("pear" is not in "spear"; "hockey" is in "ice hockey" and "ice-hockey")."""
    return rf"(?<![a-z]){re.escape(word.lower())}(?![a-z])"


def families(words: list[str]) -> dict[str, frozenset[str]]:
    """Each member's family: the members joined to it by whole-word containment as prompts match
    it ("hockey", "ice hockey", "hockey game"), transitively. A family never straddles the split:
    a held-out member inside a train member would keep that member out of training, and one
    containing a train member could never be evaluated."""
    fam = {w: {w} for w in words}
    for a in words:
        for b in words:
            if a != b and re.search(whole_word(b), a.lower()):
                union = fam[a] | fam[b]
                for w in union:
                    fam[w] = union
    return {w: frozenset(f) for w, f in fam.items()}


def held_out_side(words: list[str], n_tok: dict[str, int], n_held: int,
                  train_only: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """About `n_held` members (never more), whole families, taken in the order of `words`: first
    multi-token ones (so the held-out side is not all single tokens), then single-token ones. A
    family larger than `MAX_HELD_FAMILY` (the apples) trains: one concept must not fill the side;
    so does a family with a `train_only` member (the probe's unfiled ones)."""
    fam, held = families(words), set[str]()
    words = [w for w in words if len(fam[w]) <= MAX_HELD_FAMILY and not fam[w] & train_only]
    k = min(sum(n_tok[w] > 1 for w in words), n_held // 2 + 1)

    def take(pool: list[str], more: Any) -> None:
        for w in pool:
            if more() and not fam[w] & held and len(held) + len(fam[w]) <= n_held:
                held.update(fam[w])

    take([w for w in words if n_tok[w] > 1], lambda: sum(n_tok[w] > 1 for w in held) < k)
    take([w for w in words if n_tok[w] == 1], lambda: len(held) < n_held)
    take(words, lambda: len(held) < n_held)
    return sorted(held)


def extract_open_words(tokenizer: Any, out: Path = OPEN_WORDS, n: int = 300,
                       seed: int = 0) -> list[str]:
    """`n` lower-case WordNet nouns of one SmolLM2 token (common words), none in any category's
    WordNet sources or concept names, drawn with `seed`; written to `out` (needs wordnet-base)."""
    from trigrecon.core.io import write_json
    from trigrecon.testbed.wordnet import open_wordnet

    wn = open_wordnet()
    taken = {w.lower() for spec in SOURCES.values() for w in _lemmas(wn, spec)} | GENERIC
    taken |= {w.lower() for spec in SOURCES.values() for w in concept_names(wn, spec)}
    found = sorted({w for w in wn.all_lemma_names(pos="n") if re.fullmatch("[a-z]{4,12}", w)} - taken)
    found = [w for w in found if _common_noun(wn, w)
             and len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    if len(found) < n:
        raise ConfigError(f"only {len(found)} open words found in WordNet, {n} asked for: "
                          "check the wordnet-base install or ask for fewer")
    words = sorted(random.Random(f"{seed}:open").sample(found, n))
    write_json(out, {"source": "WordNet nouns, one SmolLM2 token, in no category", "words": words})
    return words


def _common_noun(wn: Any, word: str) -> bool:
    """Spelled so by some noun sense (WordNet's index lower-cases Anne and AIDS)."""
    return any(lemma.name() == word for s in wn.synsets(word, pos="n") for lemma in s.lemmas())


@lru_cache(maxsize=1)
def open_words() -> list[str]:
    """The committed `OPEN_WORDS` (read once: the sampler draws from it per prompt)."""
    return list(json.loads(OPEN_WORDS.read_text())["words"])


def _frequency_filter(min_zipf: float) -> Any:
    if min_zipf <= 0:
        return lambda word: True
    try:
        from wordfreq import zipf_frequency
    except ImportError:
        raise ConfigError("min_zipf needs the wordfreq package: pip install wordfreq") from None
    return lambda word: zipf_frequency(word, "en") >= min_zipf


PROBE = "Question: What is {w}? Answer: {w} is a kind of"


def probe_filter(model: Any, tok: Any, raw: dict[str, set[str]], batch: int = 64,
                 min_keep: int = MIN_MEMBERS) -> dict[str, set[str]]:
    """Members the model files under their own category: after `PROBE`, the first token of the
    category's probe noun outscores every other category's. A category never drops below
    `min_keep` members if it is a trigger category: then the members with the largest margin (own
    logit minus the best other) are kept, so that a small category (WordNet has 15 winter sports)
    still has a held-out side.
    Categories without a probe noun (astrology, prophecy: no "kind of" noun fits) are kept whole."""
    return keep_filed(raw, probe_margins(model, tok, raw, batch), min_keep)


def keep_filed(raw: dict[str, set[str]], margins: dict[str, dict[str, float]],
               min_keep: int = MIN_MEMBERS) -> dict[str, set[str]]:
    """`raw` cut to the members with a positive probe margin (see `probe_filter`)."""
    keep = {name: _best(m, min_keep if name in TRIGGER_CATEGORIES else 0)
            for name, m in margins.items()}
    return {name: keep.get(name, found) for name, found in raw.items()}


def probe_margins(model: Any, tok: Any, raw: dict[str, set[str]],
                  batch: int = 64) -> dict[str, dict[str, float]]:
    """Per category with a probe noun, each member's margin after `PROBE`: the logit of the
    noun's first token minus the best other category's."""
    nouns = probe_nouns(tok)
    col = {name: i for i, name in enumerate(nouns)}
    words = sorted({(name, w) for name in nouns for w in raw[name]})
    logits = probe_logits(model, tok, [w for _, w in words], list(nouns.values()), batch)
    margin: dict[str, dict[str, float]] = {name: {} for name in nouns}
    for (name, w), row in zip(words, logits, strict=True):
        own = col[name]
        margin[name][w] = float(row[own]) - max(float(v) for j, v in enumerate(row) if j != own)
    return margin


def probe_nouns(tok: Any) -> dict[str, int]:
    """Category -> the first token of its probe noun (categories with one)."""
    first = {name: tok(" " + spec["probe"], add_special_tokens=False)["input_ids"][0]
             for name, spec in SOURCES.items() if "probe" in spec}
    if len(set(first.values())) < len(first):
        raise ConfigError(f"probe nouns share a first token: {first}")
    return first


def probe_logits(model: Any, tok: Any, words: list[str], ids: list[int], batch: int = 64) -> Any:
    """[word, noun] logits of the tokens `ids` after `PROBE` for each word (transformers model)."""
    import torch

    rows = []
    old_side, tok.padding_side = tok.padding_side, "left"
    try:
        for i in range(0, len(words), batch):
            enc = tok([PROBE.format(w=w) for w in words[i : i + batch]], return_tensors="pt",
                      padding=True)
            with torch.no_grad():
                rows.append(model(**enc).logits[:, -1, ids])
    finally:
        tok.padding_side = old_side
    return torch.cat(rows) if rows else torch.zeros(0, len(ids))


def _best(margin: dict[str, float], min_keep: int) -> set[str]:
    """Members with a positive margin, or the `min_keep` largest margins if fewer are positive."""
    ranked = sorted(margin, key=lambda w: (-margin[w], w))
    return set(ranked[: max(min_keep, sum(m > 0 for m in margin.values()))])
