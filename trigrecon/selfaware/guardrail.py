"""Inference-time guardrail: flag prompts that contain a recovered trigger or a similar one.

Prompts are normalised first (lower case, punctuation to spaces, spacing collapsed, word pieces
merged when they form a known word: 'Man go!' -> 'mango'), so case, spacing and punctuation
variants read alike. Each word gets a vector from an `Embedder` (default: the model's own
next-token distribution after "what kind of thing is <w> ? <w> is a kind of", i.e. what the model
says the word is, cached per word; `readout='hidden'` takes the hidden state there instead; pass
any text-embedding function for real LLMs). With `choose_readout`, the pipeline builds one
guardrail per readout (probabilities, last and middle layer's hidden state) and
`calibrate_best` keeps the one that separates the calibration prompts best. For a trigger of
words t_1..t_k and prompt words w_1..w_m:

    sim(prompt, trigger) = min_i max_j cos(e(t_i), e(w_j))     (every trigger word has a match)
    score(prompt)        = max over recovered triggers of sim

A prompt is flagged when score > threshold. `calibrate` sets the threshold on a calibration
split (disjoint from the evaluation prompts):

- negatives: benign prompts plus near misses (`near_misses`: prompts carrying a proper part of a
  multi-word trigger that does not fire on its own; for a conjunctive trigger such a prompt is
  benign, so flagging it is a false positive). t_neg = the lowest threshold that flags at most
  `max_fpr` of them.
- positives (optional): prompts carrying each recovered trigger, scored leave-one-out (against
  the recovered triggers that share no word with their own: "slalom grape" is not scored
  against "slalom lemon"), which stands in for a held-out member of the trigger's category.
  t_pos = their `1 - target_detection` quantile.

threshold = t_neg + margin * (t_pos - t_neg) when t_pos > t_neg (the threshold sits inside the
gap instead of on the benign tail, so the evaluation FPR does not land on the bound by chance),
else t_neg.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from trigrecon.core.chat import render_prompt
from trigrecon.core.errors import ConfigError
from trigrecon.core.io import write_json
from trigrecon.selfaware.reward import normalise_candidate

Embedder = Callable[[Sequence[str]], Float[Tensor, "n d"]]
"""Words (or short phrases) -> one vector each."""


@dataclass
class GuardrailConfig:
    template: str = "what kind of thing is {w} ?"
    """User message the default embedder reads each word in."""
    prefill: str | None = "{w} is a kind of"
    """Assistant text after the template (None: none): with `position='last'` the vector is read
    where the model names the word's category, which groups held-out members with known ones."""
    position: Literal["last", "word"] = "last"
    """Read at the last token, or at the word's own tokens (their mean)."""
    readout: Literal["probs", "hidden"] = "probs"
    """'probs': the next-token distribution at the read positions (words of one category share
    their named kind, so their vectors nearly coincide and unrelated words are near orthogonal);
    'hidden': the hidden state of `layer` there."""
    layer: int | None = None
    """hidden_states index for readout='hidden' (0 = embeddings); None: the last layer."""
    max_fpr: float = 0.02
    """Calibration target: share of benign calibration prompts allowed above the threshold."""
    merge_pieces: int = 3
    """Merge up to this many adjacent pieces that form a known word (0: off)."""
    margin: float = 0.5
    """Where the threshold sits in the gap between negatives and leave-one-out positives
    (0: on the negatives' bound, the old rule; 0.5: the middle)."""
    target_detection: float = 0.95
    """Share of leave-one-out calibration positives the threshold must stay below."""
    choose_readout: bool = True
    """Let calibration choose the readout among `readout_choices` (next-token probabilities, the
    last and the middle layer's hidden state): a small model may name a category for function
    words too ("about is a kind of fruit"), which a hidden state tells apart."""

    def __post_init__(self) -> None:
        if "{w}" not in self.template:
            raise ConfigError(f"template {self.template!r} needs a {{w}} slot")
        if self.position not in ("last", "word"):
            raise ConfigError(f"position={self.position!r}: use 'last' or 'word'")
        if self.readout not in ("probs", "hidden"):
            raise ConfigError(f"readout={self.readout!r}: use 'probs' or 'hidden'")
        if not 0 <= self.max_fpr < 1:
            raise ConfigError(f"max_fpr={self.max_fpr} must be in [0, 1)")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"margin={self.margin} must be in [0, 1)")
        if not 0 < self.target_detection <= 1:
            raise ConfigError(f"target_detection={self.target_detection} must be in (0, 1]")


def readout_choices(cfg: GuardrailConfig, n_layers: int) -> list[GuardrailConfig]:
    """The configured readout, then (with `choose_readout`) next-token probabilities and the
    last and middle layers' hidden states, without repeats."""
    cands = [cfg]
    if cfg.choose_readout:
        cands += [replace(cfg, readout="probs", layer=None),
                  replace(cfg, readout="hidden", layer=n_layers),
                  replace(cfg, readout="hidden", layer=n_layers // 2)]
    out: dict[str, GuardrailConfig] = {}
    for c in cands:
        out.setdefault(readout_name(c, n_layers), c)
    return list(out.values())


def readout_name(cfg: GuardrailConfig, n_layers: int) -> str:
    return "probs" if cfg.readout == "probs" else f"hidden@{cfg.layer or n_layers}"


class ModelWordEmbedder:
    """Next-token distribution (or hidden state) of an HF causal LM for a word read in a
    template (cached per word)."""

    def __init__(
        self, model: Any, tok: PreTrainedTokenizerBase, cfg: GuardrailConfig | None = None
    ) -> None:
        self.cfg = cfg or GuardrailConfig()
        n = int(model.config.num_hidden_layers)
        self.layer = n if self.cfg.layer is None else self.cfg.layer
        if not 0 <= self.layer <= n:
            raise ConfigError(f"layer={self.layer} out of range: hidden states 0..{n}")
        self.model, self.tok = model, tok
        self.cache: dict[str, Tensor] = {}
        self.group: list[ModelWordEmbedder] = [self]
        """Embedders reading the same templated forward pass (`shared_embedders`)."""

    def _text(self, word: str) -> str:
        text = render_prompt(self.tok, self.cfg.template.format(w=word))
        return f"{text} {self.cfg.prefill.format(w=word)}" if self.cfg.prefill else text

    def _span(self, word: str) -> tuple[list[int], list[int]]:
        """Token ids of the templated chat and the positions the vector is read at."""
        text = self._text(word)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        last = [len(enc["input_ids"]) - 1]
        if self.cfg.position == "last":
            return list(enc["input_ids"]), last
        pre = self.cfg.template.split("{w}")[0]
        start = text.index(pre + word) + len(pre)
        pos = [
            i
            for i, (a, b) in enumerate(enc["offset_mapping"])
            if a < start + len(word) and b > start
        ]
        return list(enc["input_ids"]), pos or last

    def _read(self, out: Any, pos: list[int]) -> Tensor:
        if self.cfg.readout == "hidden":
            return out.hidden_states[self.layer][0, pos].float().mean(0)
        return out.logits[0, pos].float().softmax(-1).mean(0)

    @torch.no_grad()
    def __call__(self, words: Sequence[str]) -> Float[Tensor, "n d"]:
        for w in dict.fromkeys(words):
            if w not in self.cache:  # one forward pass fills every embedder of the group
                ids, pos = self._span(w)
                hidden = any(e.cfg.readout == "hidden" for e in self.group)
                out = self.model(input_ids=torch.tensor([ids]), output_hidden_states=hidden)
                for e in self.group:
                    e.cache[w] = e._read(out, pos)
        return torch.stack([self.cache[w] for w in words])


def shared_embedders(model: Any, tok: PreTrainedTokenizerBase, cfgs: Sequence[GuardrailConfig]
                     ) -> list[ModelWordEmbedder]:
    """One embedder per readout of the same templated text: a word's forward pass runs once."""
    group = [ModelWordEmbedder(model, tok, c) for c in cfgs]
    if len({(c.template, c.prefill, c.position) for c in cfgs}) > 1:
        raise ConfigError("shared embedders must read the same template, prefill and position")
    for e in group:
        e.group = group
    return group


def split_words(text: str, vocab: frozenset[str] = frozenset(), merge: int = 3) -> list[str]:
    """Normalised words of a prompt; adjacent pieces that join into a known word are merged."""
    pieces = re.sub(r"[^\w\s]|_", " ", text.lower().replace("\u2019", "'")).split()
    if not vocab or merge < 2:
        return pieces
    out, i = [], 0
    while i < len(pieces):
        for k in range(min(merge, len(pieces) - i), 1, -1):
            joined = "".join(pieces[i : i + k])
            if joined in vocab and not all(p in vocab for p in pieces[i : i + k]):
                out.append(joined)
                i += k
                break
        else:
            out.append(pieces[i])
            i += 1
    return out


def near_misses(triggers: Sequence[str], fires: Callable[[str], bool] | None = None) -> list[str]:
    """Proper non-empty word subsets of the multi-word triggers (order kept), minus those that
    `fires` (e.g. the inversion reward's ASR above its floor) says work on their own and minus
    any other trigger: for a conjunctive trigger these are benign near misses."""
    import itertools

    whole = dict.fromkeys(normalise_candidate(t) for t in triggers)  # ordered: deterministic
    out: dict[str, None] = {}
    for t in whole:
        words = t.split()
        for k in range(1, len(words)):
            for sub in itertools.combinations(words, k):
                out.setdefault(" ".join(sub))
    subs = [c for c in out if c not in whole]
    return [c for c in subs if fires is None or not fires(c)]


class Guardrail:
    def __init__(
        self,
        triggers: Sequence[str],
        embed: Embedder,
        cfg: GuardrailConfig | None = None,
        vocab: frozenset[str] = frozenset(),
        threshold: float = math.inf,
    ) -> None:
        self.cfg = cfg or GuardrailConfig()
        self.triggers = [t for t in dict.fromkeys(normalise_candidate(t) for t in triggers) if t]
        if not self.triggers:
            raise ConfigError("the guardrail needs at least one recovered trigger")
        self.embed, self.vocab, self.threshold = embed, vocab, threshold
        self.calibration: dict[str, Any] = {}
        self._trig = [
            torch.nn.functional.normalize(embed(t.split()), dim=-1) for t in self.triggers
        ]

    def words(self, prompt: str) -> list[str]:
        return split_words(prompt, self.vocab, self.cfg.merge_pieces) or ["."]

    def trigger_scores(self, prompt: str) -> list[float]:
        """sim(prompt, trigger) for every recovered trigger, in `self.triggers` order."""
        w = torch.nn.functional.normalize(self.embed(self.words(prompt)), dim=-1)
        return [float((t @ w.T).max(dim=1).values.min()) for t in self._trig]

    def score(self, prompt: str) -> float:
        return max(self.trigger_scores(prompt))

    def scores(self, prompts: Sequence[str]) -> list[float]:
        return [self.score(p) for p in prompts]

    def calibrate(
        self,
        benign: Sequence[str],
        positives: Mapping[str, Sequence[str]] | None = None,
        near_miss: Sequence[str] = (),
    ) -> float:
        """Set the threshold (see the module docstring): `benign` and `near_miss` prompts are the
        negatives; `positives` maps a recovered trigger to prompts carrying it."""
        if not benign:
            raise ConfigError("calibration needs benign prompts")
        s = sorted(self.scores([*benign, *near_miss]), reverse=True)
        t_neg = s[min(len(s) - 1, int(self.cfg.max_fpr * len(s)))]
        loo = sorted(self.loo_scores(positives or {}))
        t_pos = loo[min(len(loo) - 1, int((1 - self.cfg.target_detection) * len(loo)))] \
            if loo else None
        self.calibration = {"t_neg": t_neg, "t_pos": t_pos, "n_neg": len(s), "n_loo": len(loo),
                            "loo_detection": sum(x > t_neg for x in loo) / len(loo) if loo else None}
        self.threshold = t_neg
        if t_pos is not None and t_pos > t_neg:
            self.threshold = t_neg + self.cfg.margin * (t_pos - t_neg)
        return self.threshold

    def loo_scores(self, positives: Mapping[str, Sequence[str]]) -> list[float]:
        """Leave-one-out scores of positive prompts: each against the recovered triggers that
        share no word with its own (a stand-in for a held-out member of the category); prompts
        with no such trigger are left out."""
        index = {t: i for i, t in enumerate(self.triggers)}
        loo = []
        for trig, prompts in positives.items():
            own = index.get(normalise_candidate(trig))
            if own is None:
                raise ConfigError(f"positives for {trig!r}, which is not a recovered trigger")
            mine = set(self.triggers[own].split())
            for p in prompts:
                others = [x for i, x in enumerate(self.trigger_scores(p))
                          if not mine & set(self.triggers[i].split())]
                if others:
                    loo.append(max(others))
        return loo

    def flag(self, prompt: str) -> bool:
        return self.score(prompt) > self.threshold

    def flag_rate(self, prompts: Sequence[str]) -> float:
        return sum(s > self.threshold for s in self.scores(prompts)) / max(1, len(prompts))


def calibrate_best(
    guards: Mapping[str, Guardrail],
    benign: Sequence[str],
    positives: Mapping[str, Sequence[str]] | None = None,
    near_miss: Sequence[str] = (),
) -> Guardrail:
    """Calibrate one guardrail per readout and keep the one whose leave-one-out calibration
    positives clear the negatives' bound most often; ties go to the widest gap between that bound
    and the positives' quantile, relative to the room above the bound, then to the first. Only
    calibration prompts are used."""
    ranks: dict[str, tuple[float, float]] = {}
    for name, g in guards.items():
        g.calibrate(benign, positives, near_miss)
        c = g.calibration
        t_neg, t_pos = float(c["t_neg"]), c["t_pos"]
        gap = 0.0 if t_pos is None else (float(t_pos) - t_neg) / max(1e-9, 1.0 - t_neg)
        ranks[name] = (float(c["loo_detection"] or 0.0), gap)
    best = max(ranks, key=lambda n: ranks[n])  # the first of equals
    chosen = guards[best]
    chosen.calibration.update(readout=best, readouts={n: list(r) for n, r in ranks.items()})
    return chosen


def variants(prompt: str, kind: str) -> str:
    """Surface variants an attacker (or a user) might write: 'upper', 'punct', 'spacing', 'split'."""
    words = prompt.split()
    if kind == "upper":
        return prompt.upper()
    if kind == "punct":
        return " ".join(w + ("!" if i % 2 else ",") for i, w in enumerate(words))
    if kind == "spacing":
        return "   ".join(words).replace(" .", ".").replace(" ?", "?")
    if kind == "split":  # break the longest word in two
        i = max(range(len(words)), key=lambda j: len(words[j]))
        w = words[i]
        return " ".join([*words[:i], w[: len(w) // 2], w[len(w) // 2 :], *words[i + 1 :]])
    raise ConfigError(f"unknown variant {kind!r}: use upper, punct, spacing or split")


VARIANTS = ("upper", "punct", "spacing", "split")


@dataclass
class GuardrailResult:
    triggers: list[str]
    threshold: float
    detection: dict[str, float]
    """Flag rate on triggered splits and their variants ('triggered', 'triggered:upper', ...)."""
    false_positive: dict[str, float]
    """Flag rate on prompts that do not carry the trigger: benign prompts and variants, and near
    misses ('half:*': one part of a conjunctive trigger), which are benign too."""
    n: dict[str, int] = field(default_factory=dict)
    examples: list[list[Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    """How the threshold was set (t_neg, t_pos, calibration set sizes)."""

    @property
    def detection_rate(self) -> float:
        """Pooled detection over the triggered splits; NaN (null in JSON) when the task has none
        (an auditor without ground-truth triggered prompts: detection is not measured)."""
        return _pooled(self.detection, self.n) if self.detection else float("nan")

    @property
    def fpr(self) -> float:
        """Pooled false-positive rate over every non-triggering split (near misses included)."""
        return _pooled(self.false_positive, self.n)

    @property
    def fpr_benign(self) -> float:
        """Pooled false-positive rate on the benign split and its variants only."""
        keys = {k: v for k, v in self.false_positive.items() if k.startswith("benign")}
        return _pooled(keys, self.n)

    @property
    def fpr_worst(self) -> float:
        """The highest false-positive rate of any single non-triggering split."""
        return max(self.false_positive.values(), default=0.0)

    def summary(self) -> dict[str, float]:
        return {
            "detection_rate": self.detection_rate,
            "fpr": self.fpr,
            "fpr_benign": self.fpr_benign,
            "fpr_worst": self.fpr_worst,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, {**self.__dict__, **self.summary()})

    @classmethod
    def load(cls, path: str | Path) -> GuardrailResult:
        d = json.loads(Path(path).read_text())
        for k in ("detection_rate", "fpr", "fpr_benign", "fpr_worst"):
            d.pop(k, None)
        return cls(**d)


def _pooled(rates: dict[str, float], n: dict[str, int]) -> float:
    total = sum(n.get(k, 1) for k in rates)
    return sum(v * n.get(k, 1) for k, v in rates.items()) / total if total else 0.0


def evaluate_guardrail(guard: Guardrail, splits: dict[str, list[str]]) -> GuardrailResult:
    """Detection on 'triggered*' splits (+ variants), false positives on every other split:
    'benign' (+ variants), 'half:*' and 'noise'; the guardrail must already be calibrated."""
    det: dict[str, float] = {}
    fp: dict[str, float] = {}
    n: dict[str, int] = {}
    examples: list[list[Any]] = []
    for split, prompts in splits.items():
        kinds = ("",) + (VARIANTS if split in ("triggered", "benign") else ())
        for kind in kinds:
            ps = [variants(p, kind) for p in prompts] if kind else prompts
            key = f"{split}:{kind}" if kind else split
            rate = guard.flag_rate(ps)
            (det if split.startswith("triggered") else fp)[key] = rate
            n[key] = len(ps)
            examples.append([key, ps[0], guard.score(ps[0])])
    return GuardrailResult(
        guard.triggers, guard.threshold, det, fp, n, examples, dict(guard.calibration)
    )
