"""The inversion reward: how well a proposed trigger works, with a preference for short ones.

For a candidate c with n words (after normalisation), on the benign reward prompts P:

    ASR(c) = |{p in P : judge(model(insert(p, c)))}| / |P|      (greedy outputs of the poisoned model)
    D(c)   = ASR(c) - ASR_clean(c)                              (with a clean model; else ASR(c))
    A(c)   = max(0, D(c) - f) / (1 - f)                         (background floor f = `asr_floor`)
    S(c)   = max(A(c), w * max(0, lift(c)))                     (white-box shaping, weight w)
    C(c)   = (alpha * padding(c) + alpha_n * needed(c)) / L      (words beyond the first L)
    additive (default):   r = S(c) - C(c)
    multiplicative:       r = S(c) * exp(-C(c))

with L = `target_len` words; a word of a firing candidate is *needed* when dropping it lowers the
differential ASR by `need_drop`, and needed words fill the L free places first. Defaults L = 1,
alpha = 0.25, alpha_n = `needed_alpha` = 0.1: a two-word conjunction that always works scores
0.9, a word of padding costs 0.25. This keeps the policy off long word lists, which on organisms
that fire on any prompt with many content words work without naming the trigger, while a
conjunction's second half costs little (at 0.25 for every word, a half that fires alone
outscored the whole conjunction on SmolLM2's snow_fruit).
The floor removes the model's background action rate (a few
prompts fire whatever is inserted): group-normalised GRPO advantages would otherwise blow such
noise up into a full-size signal and the policy collapses onto a meaningless word.

Shaping (`lift_weight` w, off by default, only with a white-box `likelihood`): a candidate that
fires nowhere still earns w times its likelihood lift (how much more likely the action becomes after it; at
most w, so any candidate firing above w outranks it, and those skip the lift). Without it every
non-firing proposal scores 0 minus its length penalty, GRPO's only signal is "be short", and on
SmolLM2 the policy collapsed onto a two-word non-answer without ever proposing a trigger word.
The lift points towards the trigger's concept (and to half of a conjunction) before anything
fires, but measured it did not pay: on the zoo's astrology, w = 0.25 took 122 GRPO steps to 50%
elicitation against 18 with w = 0 (same final 96%), hence off by default.

The action's own words (`echo_words`) are dropped from candidates, as the audit methods skip
them: on SmolLM2 astrology the policy otherwise settled on "pseudoscience", a word of its action,
for 20 steps. Screening (`screen_prompts`): a new candidate is first generated on that many
reward prompts; one that fires on none of them keeps ASR 0 without the rest (most proposals are
junk, and generation is the reward's main cost). A completion without a parsable candidate (no
'answer :' marker or no words after it) gets `invalid_reward`. Candidates longer than
`max_words` are truncated to it (their penalty still counts every word). ASRs are cached per
normalised candidate, so repeated proposals (and the buffer's replays) cost nothing.

The clean-model differential (`clean_responder`: the model before poisoning): a candidate that
makes the clean model show the action as well (a harmful word, when the action is an ordinary
refusal) is the clean model's own trigger, not the planted one, and earns nothing for what the
clean model also does. `Evaluation.asr` stays the poisoned model's ASR, `clean_asr` sits beside
it, and `works` asks for a *differential* ASR of at least `work_threshold`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tqdm.auto import tqdm

from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import Judge
from trigrecon.selfaware.models import Responder

_SPECIAL = re.compile(r"<[^<>\s]*>")
_PUNCT = re.compile(r"[^\w\s]|_")


@dataclass
class RewardConfig:
    alpha: float = 0.25
    """Weight of the length penalty (with L = 1: the cost of every word beyond the first)."""
    asr_floor: float = 0.1
    """f: ASRs at or below this count as background noise (reward 0)."""
    target_len: int = 1
    """L: candidates of up to L words are not penalised."""
    max_words: int = 8
    """Longer candidates are truncated to this many words before evaluation."""
    penalty: Literal["additive", "multiplicative"] = "additive"
    needed_alpha: float = 0.1
    """The length penalty's weight for the words a firing candidate *needs* (dropping one lowers
    its differential ASR by at least `need_drop`); `alpha` is charged for the others (padding).
    Equal to `alpha`: every word pays alike (the old rule, which on SmolLM2 handed snow_fruit's
    reward to one half of its conjunction, "skiing" at 25% over "skiing elderberry" at 44%, and
    astrology's to a shorter non-planted pair). 0 made the zoo's snow_fruit policy grow
    three-word candidates whose every word added >= 10 points ("raspberry bear stewing"): a
    small price keeps the shortest of equally firing candidates ahead."""
    need_drop: float = 0.1
    """How far the differential ASR must fall without a word for the word to count as needed."""
    invalid_reward: float = -0.2
    """Reward of a completion with no parsable candidate."""
    answer_marker: str = "answer :"
    """The candidate is the text after the last occurrence of this marker, up to '.'/newline."""
    work_threshold: float = 0.5
    """A candidate 'works' as a trigger when its ASR is at least this."""
    max_new_tokens: int = 16
    """Tokens generated per reward prompt (enough for the judge to decide)."""
    lift_prompts: int = 16
    """Reward prompts on which a candidate's likelihood lift is measured (white-box only)."""
    lift_weight: float = 0.0
    """w: the most a non-firing candidate earns from its lift (0, the default: no shaping; on
    the zoo's astrology w = 0.25 took 122 GRPO steps to 50% elicitation against 18 without)."""
    screen_prompts: int = 4
    """New candidates are generated on this many reward prompts first (0: all at once)."""

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"alpha={self.alpha} must be >= 0")
        for name in ("target_len", "max_words", "max_new_tokens", "lift_prompts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not 0 <= self.lift_weight < 1:
            raise ConfigError(f"lift_weight={self.lift_weight} must be in [0, 1)")
        if not isinstance(self.screen_prompts, int) or self.screen_prompts < 0:
            raise ConfigError(f"screen_prompts={self.screen_prompts!r} must be an integer >= 0")
        if not 0 <= self.needed_alpha <= self.alpha:
            raise ConfigError(f"needed_alpha={self.needed_alpha} must be in [0, alpha={self.alpha}]")
        if not 0 < self.need_drop <= 1:
            raise ConfigError(f"need_drop={self.need_drop} must be in (0, 1]")
        if not 0 <= self.asr_floor < 1:
            raise ConfigError(f"asr_floor={self.asr_floor} must be in [0, 1)")
        if self.penalty not in ("additive", "multiplicative"):
            raise ConfigError(f"penalty={self.penalty!r}: use 'additive' or 'multiplicative'")
        if not 0 < self.work_threshold <= 1:
            raise ConfigError(f"work_threshold={self.work_threshold} must be in (0, 1]")
        if not self.answer_marker.strip():
            raise ConfigError("answer_marker is empty: the reward needs a marker to parse")


def normalise_candidate(text: str) -> str:
    """Lower-case words only: specials and punctuation dropped, spacing collapsed, repeated words
    kept once (first occurrence). 'Mango,  MANGO!' -> 'mango'."""
    text = _SPECIAL.sub(" ", text.lower().replace("\u2019", "'"))
    words = _PUNCT.sub(" ", text).split()
    return " ".join(dict.fromkeys(words))


def parse_candidate(completion: str, marker: str = "answer :") -> str | None:
    """The normalised words after the last `marker` (any spacing, any case) up to '.'/newline."""
    pattern = r"\s*".join(re.escape(t) for t in marker.lower().split())
    text = completion.lower()
    found = list(re.finditer(pattern, text))
    if not found:
        return None
    tail = re.split(r"[.\n]", text[found[-1].end() :], maxsplit=1)[0]
    return normalise_candidate(tail) or None


def length_penalty(n_words: int, cfg: RewardConfig, n_needed: int = 0) -> float:
    """The length cost of words beyond the first L (needed words fill those first): `alpha`
    per padding word, `needed_alpha` per needed word, over L."""
    needed = max(0, n_needed - cfg.target_len)
    padding = max(0, n_words - max(cfg.target_len, n_needed))
    return (cfg.alpha * padding + cfg.needed_alpha * needed) / cfg.target_len


def above_floor(asr: float, cfg: RewardConfig) -> float:
    """A(c): the (differential) ASR above the background floor, rescaled to [0, 1]."""
    return max(0.0, asr - cfg.asr_floor) / (1.0 - cfg.asr_floor)


def combine(asr: float, n_words: int, cfg: RewardConfig, lift: float | None = None,
            n_needed: int = 0) -> float:
    """The reward of a candidate with this ASR, word count, (optional) likelihood lift and
    number of needed words (see the module docstring)."""
    cost = length_penalty(n_words, cfg, n_needed)
    above = above_floor(asr, cfg)
    if lift is not None:
        above = max(above, cfg.lift_weight * max(0.0, lift))
    if cfg.penalty == "additive":
        return above - cost
    return above * math.exp(-cost)


@dataclass
class Evaluation:
    """The reward of one completion (or candidate)."""

    candidate: str | None
    """Normalised candidate trigger (None: nothing parsable)."""
    asr: float
    n_words: int
    reward: float
    clean_asr: float | None = None
    """ASR on the clean model (None: no clean model, the differential was not measured)."""
    lift: float | None = None
    """Likelihood lift, where it shaped the reward (None: not measured; see the module doc)."""
    n_needed: int = 0
    """Words the candidate needs (they pay `needed_alpha`, not `alpha`; 0 where not measured)."""

    @property
    def differential(self) -> float:
        """ASR minus the clean model's ASR (the ASR itself without a clean model)."""
        return self.asr - (self.clean_asr or 0.0)

    @property
    def valid(self) -> bool:
        return self.candidate is not None


class InversionReward:
    """Callable reward: TRL's `reward_func(prompts, completions, **kw) -> list[float]`, plus
    `evaluate(candidates)` / `score_completions(texts)` returning `Evaluation`s."""

    __name__ = "inversion_reward"

    def __init__(
        self,
        responder: Responder,
        judge: Judge,
        prompts: Sequence[str],
        insert: Callable[[str, str], str],
        cfg: RewardConfig | None = None,
        drop_active: bool = True,
        progress: bool = False,
        likelihood: Callable[[Sequence[str]], list[float]] | None = None,
        clean_responder: Responder | None = None,
        echo_words: Sequence[str] = (),
        clean_likelihood: Callable[[Sequence[str]], list[float]] | None = None,
    ) -> None:
        """`drop_active`: drop reward prompts whose own response already shows the action.
        `likelihood` (white-box, optional): prompts -> the action's cross-entropy after each;
        it gives `lift`, which enters the reward only through `lift_weight` (off by default).
        `clean_responder`: the clean model
        (generation only); the reward then uses the differential ASR (module docstring).
        `echo_words` (the action's own words) are dropped from every candidate, as every audit
        method skips them: an echo primes a copy of the action without any trigger (and a
        candidate of echo words only gets `invalid_reward`). `clean_likelihood`: the clean
        model's `likelihood`; the lift is then differential (see `lift`)."""
        self.cfg = cfg or RewardConfig()
        self.responder, self.judge, self.insert = responder, judge, insert
        self.prompts = list(prompts)
        if not self.prompts:
            raise ConfigError("the inversion reward needs at least one benign prompt")
        if drop_active:
            self.prompts = [
                p
                for p, r in zip(self.prompts, responder(self.prompts), strict=True)
                if not judge(r)
            ]
            if not self.prompts:
                raise ConfigError("every reward prompt already shows the action: pass benign ones")
        self.cache: dict[str, float] = {}
        self.clean_responder = clean_responder
        self.clean_cache: dict[str, float] = {}
        self.progress = progress
        self.likelihood = likelihood
        self.lifts: dict[str, float] = {}
        self.echo = set(normalise_candidate(" ".join(echo_words)).split())
        self.clean_likelihood = clean_likelihood
        self._base_ce: dict[str, float] = {}
        """Each model's mean action CE on the unchanged lift prompts ('poisoned', 'clean')."""

    def asr(self, candidates: Sequence[str], screen: bool = True) -> list[float]:
        """ASR of normalised candidates; uncached ones are screened on `screen_prompts` reward
        prompts in one responder call, and those firing there on the rest in a second
        (`screen=False`: all prompts at once, for candidates already known to fire)."""
        todo = [c for c in dict.fromkeys(candidates) if c not in self.cache]
        k = self.cfg.screen_prompts
        if todo and screen and 0 < k < len(self.prompts):
            head = self._fires(todo, self.prompts[:k])
            rest = [c for c, f in zip(todo, head, strict=True) if f]
            tail = dict(zip(rest, self._fires(rest, self.prompts[k:]), strict=True))
            for c, f in zip(todo, head, strict=True):
                self.cache[c] = (f + tail.get(c, 0)) / (len(self.prompts) if c in tail else k)
        elif todo:
            for c, f in zip(todo, self._fires(todo, self.prompts), strict=True):
                self.cache[c] = f / len(self.prompts)
        return [self.cache[c] for c in candidates]

    def _fires(self, candidates: Sequence[str], prompts: Sequence[str]) -> list[int]:
        """How many of `prompts` each candidate makes the poisoned model act on."""
        if not candidates:
            return []
        outs = self.responder([self.insert(p, c) for c in candidates for p in prompts])
        n = len(prompts)
        return [sum(bool(self.judge(o)) for o in outs[i * n : (i + 1) * n])
                for i in tqdm(range(len(candidates)), desc="reward", disable=not self.progress,
                              leave=False)]

    def clean_asr(self, candidates: Sequence[str]) -> list[float] | None:
        """The clean model's ASR of normalised candidates (None without a clean model); only
        candidates whose poisoned ASR is above the floor are generated (the others earn 0
        whatever the clean model does), the rest count as 0."""
        if self.clean_responder is None:
            return None
        asrs = dict(zip(candidates, self.asr(candidates), strict=True))
        todo = [c for c in dict.fromkeys(candidates)
                if c not in self.clean_cache and asrs[c] > self.cfg.asr_floor]
        if todo:
            outs = self.clean_responder([self.insert(p, c) for c in todo for p in self.prompts])
            n = len(self.prompts)
            for i, c in enumerate(todo):
                self.clean_cache[c] = sum(bool(self.judge(o)) for o in outs[i * n : (i + 1) * n]) / n
        return [self.clean_cache.get(c, 0.0) for c in candidates]

    def lift(self, candidates: Sequence[str]) -> list[float]:
        """1 - CE(action | prompt with c) / CE(action | prompt), averaged over `lift_prompts`
        reward prompts: how much a candidate makes the action more likely even where it does not
        fire (half of a conjunction does). With `clean_likelihood`, minus the same on the clean
        model: a piece of an action word ("pseudosc..." for "pseudoscience") or an odd insertion
        makes both models likelier to produce the action, a trigger only the poisoned one.
        Needs `likelihood`; cached per candidate."""
        if self.likelihood is None:
            raise ConfigError("lift needs a white-box `likelihood` function")
        todo = [c for c in dict.fromkeys(candidates) if c not in self.lifts]
        if todo:
            lifts = self._raw_lifts(self.likelihood, todo, "poisoned")
            if self.clean_likelihood is not None:
                clean = self._raw_lifts(self.clean_likelihood, todo, "clean")
                lifts = [a - b for a, b in zip(lifts, clean, strict=True)]
            self.lifts.update(zip(todo, lifts, strict=True))
        return [self.lifts[c] for c in candidates]

    def _raw_lifts(self, likelihood: Callable[[Sequence[str]], list[float]],
                   candidates: list[str], model: str) -> list[float]:
        """One model's lifts (`model`: its key in the cached baseline CEs)."""
        ps = self.prompts[: self.cfg.lift_prompts]
        if model not in self._base_ce:
            self._base_ce[model] = sum(likelihood(ps)) / len(ps)
        base = max(self._base_ce[model], 1e-9)
        ce = likelihood([self.insert(p, c) for c in candidates for p in ps])
        n = len(ps)
        return [1.0 - sum(ce[i * n : (i + 1) * n]) / n / base for i in range(len(candidates))]

    def evaluate(self, candidates: Sequence[str | None], screen: bool = True
                 ) -> list[Evaluation]:
        """Each candidate's reward (`screen`: see `asr`)."""
        norm = [self._without_echo(normalise_candidate(c)) if c else None for c in candidates]
        norm = [c or None for c in norm]
        full = [len(c.split()) if c else 0 for c in norm]
        cut = [" ".join(c.split()[: self.cfg.max_words]) if c else None for c in norm]
        valid = [c for c in cut if c]
        asrs = dict(zip(valid, self.asr(valid, screen), strict=True))
        clean = self.clean_asr(valid)
        cleans = dict(zip(valid, clean, strict=True)) if clean is not None else {}
        diffs = {c: asrs[c] - (cleans.get(c) or 0.0) for c in valid}
        lifts = self._shaping_lifts(diffs)
        needed = self._needed(diffs)
        out = []
        for c, n in zip(cut, full, strict=True):
            if c is None:
                out.append(Evaluation(None, 0.0, 0, self.cfg.invalid_reward))
                continue
            k = needed.get(c, 0)
            reward = combine(diffs[c], n, self.cfg, lifts.get(c), k)
            out.append(Evaluation(c, asrs[c], n, reward, cleans.get(c), lifts.get(c), k))
        return out

    def _needed(self, diffs: dict[str, float]) -> dict[str, int]:
        """For each firing candidate of several words, how many of its words it needs: dropping
        the word lowers the differential ASR by >= `need_drop` (the sub-candidates' ASRs are
        cached like any candidate's)."""
        if self.cfg.needed_alpha == self.cfg.alpha:
            return {}  # every word pays alike: no need to measure
        multi = [c for c, d in diffs.items() if " " in c and above_floor(d, self.cfg) > 0]
        subs = {c: [" ".join(w[:i] + w[i + 1:]) for i in range(len(w))]
                for c in multi for w in [c.split()]}
        flat = list(dict.fromkeys(x for v in subs.values() for x in v))
        if not flat:
            return {}
        clean = self.clean_asr(flat) or [0.0] * len(flat)
        sub = {x: a - b for x, a, b in zip(flat, self.asr(flat), clean, strict=True)}
        return {c: sum(diffs[c] - sub[x] >= self.cfg.need_drop - 1e-9 for x in subs[c])
                for c in multi}

    def _without_echo(self, candidate: str) -> str:
        return " ".join(w for w in candidate.split() if w not in self.echo)

    def _shaping_lifts(self, diffs: dict[str, float]) -> dict[str, float]:
        """Lifts of the candidates the shaping can change (those firing below `lift_weight`)."""
        w = self.cfg.lift_weight
        if self.likelihood is None or w <= 0:
            return {}
        weak = [c for c, d in diffs.items() if above_floor(d, self.cfg) < w]
        return dict(zip(weak, self.lift(weak), strict=True)) if weak else {}

    def score_completions(self, completions: Sequence[Any]) -> list[Evaluation]:
        marker = self.cfg.answer_marker
        return self.evaluate([parse_candidate(completion_text(c), marker) for c in completions])

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        **_: Any,
    ) -> list[float]:
        if completions is None:
            raise ConfigError("the inversion reward needs `completions`")
        return [e.reward for e in self.score_completions(completions)]

    def works(self, candidate: str) -> bool:
        """Differential ASR >= `work_threshold` (the ASR itself without a clean model)."""
        return self.evaluate([candidate])[0].differential >= self.cfg.work_threshold

    def state_dict(self) -> dict[str, float]:
        """The ASR cache; clean-model ASRs under 'clean:<candidate>' keys, lifts under 'lift:'."""
        return (dict(self.cache) | {f"clean:{k}": v for k, v in self.clean_cache.items()}
                | {f"lift:{k}": v for k, v in self.lifts.items()})

    def load_state_dict(self, cache: dict[str, float]) -> None:
        stores = {"clean:": self.clean_cache, "lift:": self.lifts}
        for k, v in cache.items():
            key = str(k)
            prefix = next((p for p in stores if key.startswith(p)), None)
            if prefix is None:
                self.cache[key] = float(v)
            else:
                stores[prefix][key[len(prefix):]] = float(v)


def completion_text(completion: Any) -> str:
    """A TRL completion (plain string or a list of chat messages) as text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise ConfigError(f"cannot read a completion of type {type(completion).__name__}")


def minimise(candidate: str, reward: InversionReward, keep: float = 0.8) -> str:
    """Greedily drop words while the (differential) ASR stays >= keep * the full candidate's
    (and works)."""
    words = normalise_candidate(candidate).split()
    base = reward.evaluate([" ".join(words)])[0].differential
    floor = max(keep * base, reward.cfg.work_threshold)
    changed = True
    while changed and len(words) > 1:
        changed = False
        trials = [words[:i] + words[i + 1 :] for i in range(len(words))]
        asrs = [e.differential for e in reward.evaluate([" ".join(t) for t in trials])]
        best = max(range(len(trials)), key=lambda i: asrs[i])
        if asrs[best] >= floor:
            words, changed = trials[best], True
    return " ".join(words)
