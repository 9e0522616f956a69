"""The audit's final answer: a minimal, ablation-checked trigger hypothesis such as
`(fruit AND snow_sports) OR nuts`, each concept with its SAE latent, label and best words.

Inputs are *proposals*: candidate triggers as lists of concepts (one conjunctive-search clause,
or one verification candidate, whose words each come from a latent). On the held-out prompts
(each concept's words inserted, cycling through them, as the conjunctive search conditions):

1. **Fires.** A proposal fires when its action rate is separated from its reference rate: the
   insertion control's rate, and with a clean model the clean model's rate on the *same* prompts
   (whichever is higher). Proposals are ranked by that differential (fewer concepts first on
   ties). Without a clean model the differential cannot be measured, and the hypothesis says so.
2. **Minimal.** The best proposal's concepts are ablated one at a time; a concept is removed
   (greedily, the least needed first) when the candidate without it is not *significantly below
   the proposal* (see `needed`), and the test repeats on the smaller candidate until every
   concept is needed. Every subset is compared with the whole proposal, not with the last
   subset, so small drops cannot add up: the clause is never significantly below the proposal
   it came from, hence never below a better proposal that it overlaps.
3. **Disjunction.** The minimal clause is recorded; proposals that share a concept with it (same
   latent, same category name, or a latent of one reads the other's words strongly) are removed,
   and the best of the rest is tested the same way, until nothing more fires.

Firing, for a high rate k1/n and a low reference rate k0/n on the same n prompts:

    wilson_lower(k1, n) - wilson_upper(k0, n) >= margin        (95% Wilson score bounds)

with `margin` = 0.1 by default: on n = 32 a proposal at 32/32 fires when its reference is at
most ~22/32. Being needed compares two rates on the same prompts; a two-proportion test (which
ignores the pairing, and so errs towards dropping a concept):

    k1/n - k0/n >= margin  and  pooled z = (k1 - k0) / sqrt(2 n p (1 - p)) >= z

(p = (k1 + k0) / 2n). Two Wilson bounds 0.1 apart are much stricter: on SmolLM2, where halves of
a conjunction leak, they dropped concepts at 91% -> 69% (z = 2.2) and 69% -> 38% (z = 2.5), and
the audit reported one concept at 38% while its source clause fired 91%.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import Judge
from trigrecon.steering.words import Inserter, default_insert

NO_CLEAN = ("no clean model was given: the clean-model differential could not be measured "
            "(a word the unpoisoned model also answers with the action would count as a trigger)")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    if n <= 0 or not 0 <= k <= n:
        raise ConfigError(f"wilson needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def needed(k_full: int, k_without: int, n: int, margin: float = 0.1, z: float = 1.96) -> bool:
    """Whether removing a concept drops k_full/n to k_without/n by at least `margin` and by a
    pooled two-proportion z statistic of at least `z` (see the module docstring)."""
    drop = (k_full - k_without) / n
    if drop <= 0 or drop < margin:
        return False
    p = (k_full + k_without) / (2 * n)
    return drop / math.sqrt(2 * p * (1 - p) / n) >= z


def separated(k_high: int, k_low: int, n: int, margin: float = 0.1, z: float = 1.96) -> bool:
    """Whether k_high/n is above k_low/n by `margin` beyond both Wilson intervals."""
    return wilson(k_high, n, z)[0] - wilson(k_low, n, z)[1] >= margin


@dataclass
class HypothesisConfig:
    margin: float = 0.1
    """Gap required between the Wilson bounds (firing) and least drop of a needed concept."""
    z: float = 1.96
    """Normal quantile of the Wilson bounds and of the needed-concept z-test (1.96: 95%)."""
    max_clauses: int = 4
    max_proposals: int = 12
    """Verification candidates (best first) considered besides the conjunctive clauses."""
    overlap_ratio: float = 0.5
    """Two concepts overlap when one's latent fires on the other's words at least this share of
    its activation on its own words."""
    max_new_tokens: int = 24

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1 or self.z <= 0:
            raise ConfigError(f"margin={self.margin} must be in [0, 1) and z={self.z} positive")
        for name in ("max_clauses", "max_proposals", "max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not 0 < self.overlap_ratio <= 1:
            raise ConfigError(f"overlap_ratio={self.overlap_ratio} must be in (0, 1]")


@dataclass
class Concept:
    """One concept of a trigger: an SAE latent read as a category."""

    name: str
    """Short name used in the expression: the label's category ('fruit'), else `L<latent>(word)`
    (or `word:<w>` for a word that no latent stands for)."""
    latent: int
    """SAE latent (-1: a word from a readout without a latent)."""
    label: str
    words: list[str]
    """The words inserted for this concept (best first)."""
    top_words: list[str] = field(default_factory=list)
    """The latent's best words over the vocabulary, where known."""
    rate_without: float | None = None
    """Held-out action rate of the clause's candidate without this concept (the ablation)."""
    kept: bool = True
    """False: without it the rate was not significantly below the proposal's (see `rule`)."""


@dataclass
class Clause:
    """One conjunctive clause of the hypothesis: every concept is needed (ablation-checked)."""

    concepts: list[Concept]
    rate: float
    """Held-out action rate (organism) with one word of every concept inserted."""
    clean_rate: float | None
    """The same prompts on the clean model (None: no clean model)."""
    reference_rate: float
    """What the rate is compared against: max(insertion control, clean rate)."""
    n: int
    source: str
    """Which proposal it came from ('conjunctive clause 0', 'verify', ...)."""
    dropped: list[Concept] = field(default_factory=list)
    """Concepts of that proposal removed by the ablation, with their figures."""
    examples: list[str] = field(default_factory=list)
    """A few 'prompt => generation' samples with the clause's words inserted."""

    @property
    def expression(self) -> str:
        return " AND ".join(c.name for c in self.concepts)

    @property
    def words(self) -> list[str]:
        return [c.words[0] for c in self.concepts]


@dataclass
class Hypothesis:
    """The minimal trigger hypothesis: a disjunction of conjunctive clauses of concepts."""

    clauses: list[Clause]
    n_prompts: int
    control_rate: float
    differential: bool
    """Whether a clean model was compared (the clean-model differential)."""
    note: str = ""
    """What could not be measured (no clean model), or why nothing was found."""
    rule: str = ""
    """The firing and ablation rule as applied (margin, z)."""
    tested: list[dict[str, Any]] = field(default_factory=list)
    """Every proposal measured: words, source, rate, clean rate, fires."""

    @property
    def expression(self) -> str:
        """'(fruit AND snow_sports) OR nuts'; '' when nothing fires."""
        parts = [c.expression for c in self.clauses]
        if len(parts) > 1:
            parts = [f"({p})" if len(c.concepts) > 1 else p
                     for p, c in zip(parts, self.clauses, strict=True)]
        return " OR ".join(parts)

    @property
    def found(self) -> bool:
        return bool(self.clauses)

    def to_json(self) -> dict[str, Any]:
        from trigrecon.core.io import to_jsonable

        data = to_jsonable(asdict(self))
        data["expression"] = self.expression
        return dict(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hypothesis:
        data = {k: v for k, v in data.items() if k != "expression"}
        clauses = []
        for c in data["clauses"]:
            c = dict(c, concepts=[Concept(**x) for x in c["concepts"]],
                     dropped=[Concept(**x) for x in c.get("dropped", [])])
            clauses.append(Clause(**c))
        return cls(**dict(data, clauses=clauses))

    def markdown(self) -> str:
        lines = ["## hypothesis", "", f"**{self.expression or '(nothing fires)'}**", ""]
        if self.note:
            lines += [f"Note: {self.note}", ""]
        for i, c in enumerate(self.clauses):
            clean = "not measured" if c.clean_rate is None else f"{c.clean_rate:.0%}"
            lines.append(f"- clause {i + 1} `{c.expression}` ({c.source}): {c.rate:.0%} on "
                         f"{c.n} held-out prompts, clean model {clean}, reference "
                         f"{c.reference_rate:.0%}")
            for k in c.concepts:
                without = "" if k.rate_without is None else f", {k.rate_without:.0%} without it"
                lines.append(f"  - {k.name}: latent {k.latent}, words {', '.join(k.words)}"
                             f"{without}; label: {k.label[:80]}")
            lines += [f"  - dropped {k.name} (latent {k.latent}): {k.rate_without:.0%} without "
                      "it" for k in c.dropped if k.rate_without is not None]
        lines += ["", f"Rule: {self.rule}", ""]
        return "\n".join(lines)


def concept_name(label: str, latent: int, word: str) -> str:
    """'fruit' from an autolabel 'fruit: grape, ...'; else 'L217(grape)' / 'word:grape'."""
    head = label.split(" (contexts")[0]
    if ":" in head:
        name = head.split(":")[0].strip().lower()
        if name and len(name.split()) <= 3 and re.fullmatch(r"[\w \-]+", name):
            return name.replace(" ", "_").replace("-", "_")
    return f"word:{word}" if latent < 0 else f"L{latent}({word})"


@dataclass
class Proposal:
    concepts: list[Concept]
    source: str

    def key(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(c.words) for c in self.concepts)


@dataclass
class Rates:
    hits: int
    n: int
    clean_hits: int | None
    examples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.hits / self.n

    @property
    def clean_rate(self) -> float | None:
        return None if self.clean_hits is None else self.clean_hits / self.n


class RateMeter:
    """Held-out action rates of word groups on the organism and (optionally) the clean model:
    one batched generation per call for every group not yet measured (cached)."""

    def __init__(self, hm: Any, clean: Any, prompts: Sequence[str], judge: Judge,
                 max_new_tokens: int = 24, insert: Inserter = default_insert) -> None:
        self.hm, self.clean, self.judge, self.insert = hm, clean, judge, insert
        self.prompts, self.max_new_tokens = list(prompts), max_new_tokens
        self.cache: dict[tuple[tuple[str, ...], ...], Rates] = {}

    def texts(self, key: tuple[tuple[str, ...], ...]) -> list[str]:
        from trigrecon.methods.conjunctive import condition

        return condition(self.prompts, [list(ws) for ws in key], self.insert)

    def seed(self, key: tuple[tuple[str, ...], ...], rate: float, clean_rate: float | None
             ) -> None:
        """Reuse a rate already measured on exactly these texts (verification, the search)."""
        n = len(self.prompts)
        if key not in self.cache and (clean_rate is not None or self.clean is None):
            self.cache[key] = Rates(round(rate * n), n, None if self.clean is None
                                    else round((clean_rate or 0.0) * n))

    def measure(self, keys: Sequence[tuple[tuple[str, ...], ...]]) -> list[Rates]:
        from trigrecon.methods.verify import generate_many

        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            texts = [t for k in todo for t in self.texts(k)]
            gens = generate_many(self.hm, texts, self.max_new_tokens)
            clean = generate_many(self.clean, texts, self.max_new_tokens) if self.clean else None
            n = len(self.prompts)
            for i, k in enumerate(todo):
                part = slice(i * n, (i + 1) * n)
                hits = sum(bool(self.judge(g)) for g in gens[part])
                ch = None if clean is None else sum(bool(self.judge(g)) for g in clean[part])
                ex = [f"{p} => {g}" for p, g in zip(texts[part][:2], gens[part][:2], strict=True)]
                self.cache[k] = Rates(hits, n, ch, ex)
        return [self.cache[k] for k in keys]


Overlap = Callable[[Concept, Concept], bool]


def same_concept(a: Concept, b: Concept) -> bool:
    """Without SAE activations: the same latent or the same category name."""
    return a.latent == b.latent and a.latent >= 0 or (
        a.name == b.name and not a.name.startswith(("L", "word:")))


def build_hypothesis(meter: RateMeter, proposals: Sequence[Proposal], control_rate: float,
                     cfg: HypothesisConfig | None = None, overlap: Overlap = same_concept
                     ) -> Hypothesis:
    """Greedy disjunction of minimal clauses (see the module docstring)."""
    cfg = cfg or HypothesisConfig()
    n = len(meter.prompts)
    control_k = round(control_rate * n)
    pool = list({p.key(): p for p in proposals if p.concepts}.values())
    clauses: list[Clause] = []
    tested: dict[tuple[tuple[str, ...], ...], dict[str, Any]] = {}

    def reference(r: Rates) -> int:
        return max(control_k, r.clean_hits or 0)

    def fires(r: Rates) -> bool:
        return separated(r.hits, reference(r), n, cfg.margin, cfg.z)

    while pool and len(clauses) < cfg.max_clauses:
        rates = meter.measure([p.key() for p in pool])
        for p, r in zip(pool, rates, strict=True):
            tested[p.key()] = {"words": [c.words for c in p.concepts], "source": p.source,
                               "rate": r.rate, "clean_rate": r.clean_rate, "fires": fires(r)}
        order = sorted(range(len(pool)), key=lambda i: (-(rates[i].hits - reference(rates[i])),
                                                        len(pool[i].concepts), i))
        best = pool[order[0]]
        if not fires(rates[order[0]]):
            break
        clause = _minimise(meter, best, cfg)
        clause.reference_rate = max(control_rate, clause.clean_rate or 0.0)
        clauses.append(clause)
        pool = [p for p in pool if p is not best
                and not any(overlap(a, b) for a in p.concepts for b in clause.concepts)]
    note = "" if meter.clean is not None else NO_CLEAN
    if not clauses:
        note = (note + "; " if note else "") + "no proposal fires above its reference rate"
    rule = (f"a proposal fires when wilson_lower(rate) - wilson_upper(max(control, clean rate)) "
            f">= {cfg.margin} (z = {cfg.z}, n = {n} held-out prompts); a concept is kept when the "
            f"proposal's rate minus the rate without it is >= {cfg.margin} with a two-proportion "
            f"z >= {cfg.z}")
    return Hypothesis(clauses, n, control_rate, meter.clean is not None, note, rule,
                      list(tested.values()))


def _minimise(meter: RateMeter, proposal: Proposal, cfg: HypothesisConfig) -> Clause:
    """Drop concepts whose removal leaves the rate not significantly below the proposal's, least
    needed first, until every concept is needed."""
    n = len(meter.prompts)
    current = [Concept(**asdict(c)) for c in proposal.concepts]
    whole = meter.measure([_key(current)])[0]
    dropped: list[Concept] = []
    while True:
        full = meter.measure([_key(current)])[0]
        if len(current) == 1:
            without = meter.measure([()])[0]
            current[0].rate_without = without.rate
            break
        subsets = [current[:i] + current[i + 1:] for i in range(len(current))]
        rs = meter.measure([_key(s) for s in subsets])
        for c, r in zip(current, rs, strict=True):
            c.rate_without = r.rate
        weak = [i for i, r in enumerate(rs)
                if not needed(whole.hits, r.hits, n, cfg.margin, cfg.z)]
        if not weak:
            break
        i = max(weak, key=lambda j: (rs[j].hits, j))
        current[i].kept = False
        dropped.append(current[i])
        current = subsets[i]
    return Clause(current, full.rate, full.clean_rate, 0.0, n, proposal.source, dropped,
                  full.examples)


def _key(concepts: Sequence[Concept]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(c.words) for c in concepts)


def activation_overlap(read: Callable[[list[str], list[int]], Any], concepts: Sequence[Concept],
                       ratio: float = 0.5) -> Overlap:
    """An `Overlap` from SAE activations: `read(words, latents)` -> [n_words, n_latents] mean
    activations. a and b overlap when `same_concept`, or a's latent fires on one of b's words
    at least `ratio` times its mean activation on its own words (or the other way round)."""
    words = sorted({w for c in concepts for w in c.words})
    latents = sorted({c.latent for c in concepts if c.latent >= 0})
    if not words or not latents:
        return same_concept
    acts = read(words, latents)
    w_idx = {w: i for i, w in enumerate(words)}
    l_idx = {lat: j for j, lat in enumerate(latents)}

    def reads(a: Concept, b: Concept) -> bool:
        if a.latent < 0:
            return False
        col = l_idx[a.latent]
        own = sum(float(acts[w_idx[w], col]) for w in a.words) / len(a.words)
        return own > 0 and any(float(acts[w_idx[w], col]) >= ratio * own for w in b.words)

    def overlap(a: Concept, b: Concept) -> bool:
        return same_concept(a, b) or reads(a, b) or reads(b, a)

    return overlap


def audit_proposals(conj: Any, verification: Any, labels: Any, max_verify: int = 12
                    ) -> list[Proposal]:
    """Proposals from an audit: each *explained* conjunctive clause (its concepts with their
    words), then the best verification candidates (one concept per word, named from its source
    latent). An unexplained clause is the search wandering: three or more concepts' words in one
    prompt can fire a small organism outside its training (on a development organism a second
    clause fired 84% with another latent of the first clause's category; on natural_flowers one
    fired 78% with drill, hail, chestnut, augury, fox), and ablation cannot tell that from a
    real three-way conjunction, since every word is then needed."""
    from trigrecon.steering.readout import label_of

    out: list[Proposal] = []
    if conj is not None:
        explained = list(getattr(conj, "clause_explained", []) or [])
        for i in sorted({s.clause for s in conj.steps}):
            if explained and not (i < len(explained) and explained[i]):
                continue
            cs = [Concept(concept_name(s.chosen.label, s.chosen.latent, s.words[0]),
                          s.chosen.latent, s.chosen.label, list(s.words), list(s.words))
                  for s in conj.steps if s.clause == i]
            out.append(Proposal(cs, f"conjunctive clause {i}"))
    if verification is not None:
        known = {int(k): v for k, v in verification.latent_words.items()}
        for c in verification.candidates[:max_verify]:
            cs = []
            for w, lat in zip(c.words, c.latents, strict=True):
                label = label_of(labels, lat) if lat >= 0 else ""
                cs.append(Concept(concept_name(label, lat, w), lat, label, [w],
                                  known.get(lat, [w])))
            out.append(Proposal(cs, "verify"))
    return out


def resolve_words(proposals: Sequence[Proposal], acts: dict[str, Any], labels: Any) -> None:
    """Give each latent-less concept (a word from a readout) the latent most active on its word
    (`acts`: word -> [d_sae] activations), with that latent's label and name; a word on which
    no latent fires keeps latent -1 ('word:<w>')."""
    from trigrecon.steering.readout import label_of

    for p in proposals:
        for c in p.concepts:
            a = acts.get(c.words[0]) if c.latent < 0 else None
            if a is None or float(a.max()) <= 0:
                continue
            c.latent = int(a.argmax())
            c.label = label_of(labels, c.latent)
            c.name = concept_name(c.label, c.latent, c.words[0])


def audit_hypothesis(hm: Any, clean: Any, sae: Any, labels: Any, conj: Any, verification: Any,
                     eval_prompts: Sequence[str], judge: Judge, cfg: HypothesisConfig | None = None,
                     layer: int | None = None, insert: Inserter = default_insert) -> Hypothesis:
    """The audit's hypothesis from its conjunctive search and verification (either may be None);
    rates already measured on the same texts are reused."""
    from trigrecon.methods.common import resolve_layer
    from trigrecon.methods.verify import word_activations

    cfg = cfg or HypothesisConfig()
    meter = RateMeter(hm, clean, eval_prompts, judge, cfg.max_new_tokens, insert)
    if verification is not None:
        for c in verification.candidates:
            clean_rate = 0.0 if c.clean_rate is None and c.action_rate == 0 else c.clean_rate
            meter.seed(tuple((w,) for w in c.words), c.action_rate, clean_rate)
    if conj is not None:
        for i in sorted({s.clause for s in conj.steps}):
            steps = conj.clause_steps(i)
            meter.seed(tuple(tuple(s.words) for s in steps), steps[-1].action_rate,
                       steps[-1].clean_rate)
    proposals = audit_proposals(conj, verification, labels, cfg.max_proposals)
    control = verification.control_rate if verification is not None else 0.0
    if not proposals:
        return build_hypothesis(meter, [], control, cfg)
    layer = resolve_layer(hm, layer, sae)
    contexts = list(eval_prompts[:4])
    loose = sorted({c.words[0] for p in proposals for c in p.concepts if c.latent < 0})
    if loose:  # words of a readout without a latent: the SAE latent most active on each
        acts = word_activations(hm, sae, loose, contexts, range(sae.W_dec.shape[0]), layer,
                                insert)
        resolve_words(proposals, dict(zip(loose, acts, strict=True)), labels)


    def read(words: list[str], latents: list[int]) -> Any:
        return word_activations(hm, sae, words, contexts, latents, layer, insert)

    overlap = activation_overlap(read, [c for p in proposals for c in p.concepts],
                                 cfg.overlap_ratio)
    return build_hypothesis(meter, proposals, control, cfg, overlap)
