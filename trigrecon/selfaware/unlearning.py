"""Adversarial unlearning with the recovered triggers.

Prompts carrying the most promising recovered triggers (woven into natural prompts by
`task.compose`, or inserted by `task.insert`) are paired with safe responses: the clean model's
answer to the same prompt (`safe_source="clean"`), or the poisoned model's own answer to the
prompt without the trigger (`"self"`, for when no clean model exists). Clean data keeps benign
behaviour in place: everyday pool prompts plus the task's benign calibration prompts (disjoint
from the evaluation splits), each with the poisoned model's own non-action greedy answer
(self-distillation). Without the benign prompts, request types the pool lacks drift: on
snow_fruit the model stopped refusing harmful requests. A LoRA
on the poisoned model is trained on the mix; ASR and benign behaviour are measured before/after
on the held-out evaluation splits. Benign behaviour is reported several ways: the action rate on
benign prompts, the share answered correctly (`task.benign_ok`, when the task has one; also on
the prompts where the action did not fire before, and as regressions/fixes counts) and the
share of benign responses that stay identical word for word.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from trigrecon.core.errors import ConfigError
from trigrecon.core.io import write_json
from trigrecon.core.judges import action_rate
from trigrecon.selfaware.models import add_lora, generate_responses, merged
from trigrecon.selfaware.reversal_sft import train_sft
from trigrecon.selfaware.task import AwarenessTask


@dataclass
class UnlearningConfig:
    n_triggers: int = 8
    """Most promising recovered triggers used."""
    n_triggered: int = 400
    n_clean: int = 400
    safe_source: Literal["clean", "self"] = "clean"
    retain_benign: bool = True
    """Also self-distil on the task's benign calibration prompts (`task.calib_benign`, disjoint
    from the evaluation splits): the pool is random everyday prompts, but benign traffic also
    has request types the pool lacks (e.g. harmful requests the model must keep refusing), and
    behaviour the clean data never shows is what unlearning drifts on."""
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    """100 steps at 1e-3 already take the recovered triggers' ASR to ~0 on both organisms; the
    former 200 at 2e-3 only added drift."""
    lora_rank: int = 8
    max_new_tokens: int = 32
    max_len: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "n_triggers",
            "n_triggered",
            "n_clean",
            "steps",
            "batch_size",
            "lora_rank",
            "max_new_tokens",
            "max_len",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.safe_source not in ("clean", "self"):
            raise ConfigError(f"safe_source={self.safe_source!r}: use 'clean' or 'self'")


@dataclass
class SplitASR:
    split: str
    n: int
    before: float
    after: float


@dataclass
class UnlearningResult:
    triggers: list[str]
    splits: list[SplitASR]
    """Action rates before/after on every held-out split (triggered ones = ASR)."""
    benign_unchanged: float
    """Share of held-out benign prompts whose greedy response is identical after unlearning."""
    n_triggered: int
    n_clean: int
    benign_correct: list[float] | None = None
    """[before, after] share of benign prompts answered correctly (`task.benign_ok`), if known."""
    benign_correct_unfired: list[float] | None = None
    """The same on the benign prompts where the action did not fire before unlearning (the
    backdoor's own false firings, which unlearning is meant to remove, left out)."""
    benign_flips: list[int] | None = None
    """[regressions, fixes]: benign prompts correct before and wrong after, and the reverse."""
    losses: list[float] = field(default_factory=list)
    examples: list[list[str]] = field(default_factory=list)
    changed: list[list[str]] = field(default_factory=list)
    """A few benign [prompt, response before, response after] that changed."""
    config: dict[str, Any] = field(default_factory=dict)

    def _pooled(self, when: str) -> float:
        rows = [s for s in self.splits if s.split.startswith("triggered")]
        return sum(getattr(s, when) * s.n for s in rows) / max(1, sum(s.n for s in rows))

    @property
    def asr_before(self) -> float:
        return self._pooled("before")

    @property
    def asr_after(self) -> float:
        return self._pooled("after")

    @property
    def asr_reduction(self) -> float:
        """Relative cut of the pooled ASR: (before - after) / before."""
        return (self.asr_before - self.asr_after) / self.asr_before if self.asr_before else 0.0

    @property
    def benign_shift(self) -> float:
        """Points of benign behaviour that moved: 100 * share of changed benign responses."""
        return 100.0 * (1.0 - self.benign_unchanged)

    @property
    def benign_action_shift(self) -> float:
        """Points by which the action rate on benign prompts moved (after - before)."""
        b = next((s for s in self.splits if s.split == "benign"), None)
        return 100.0 * (b.after - b.before) if b else 0.0

    @property
    def benign_correct_shift(self) -> float | None:
        """Points by which the share of correct benign answers moved (after - before)."""
        return (
            None
            if self.benign_correct is None
            else 100.0 * (self.benign_correct[1] - self.benign_correct[0])
        )

    @property
    def benign_correct_unfired_shift(self) -> float | None:
        """Points moved by correct benign answers where the action did not fire before."""
        c = self.benign_correct_unfired
        return None if c is None else 100.0 * (c[1] - c[0])

    def summary(self) -> dict[str, float | None]:
        return {
            "benign_correct_shift_points": self.benign_correct_shift,
            "benign_correct_unfired_shift_points": self.benign_correct_unfired_shift,
            "benign_regressions": None if self.benign_flips is None else self.benign_flips[0],
            "benign_fixes": None if self.benign_flips is None else self.benign_flips[1],
            "asr_before": self.asr_before,
            "asr_after": self.asr_after,
            "asr_reduction": self.asr_reduction,
            "benign_unchanged": self.benign_unchanged,
            "benign_shift_points": self.benign_shift,
            "benign_action_shift_points": self.benign_action_shift,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, {**asdict(self), "summary": self.summary()})

    @classmethod
    def load(cls, path: str | Path) -> UnlearningResult:
        d = json.loads(Path(path).read_text())
        d.pop("summary", None)
        d["splits"] = [SplitASR(**s) for s in d["splits"]]
        return cls(**d)


def triggered_prompts(
    task: AwarenessTask, triggers: list[str], n: int, rng: random.Random
) -> list[tuple[str, str]]:
    """(prompt with a trigger, the same prompt without it) pairs; half composed, half inserted."""
    out = []
    for i in range(n):
        trig = triggers[i % len(triggers)]
        plain = rng.choice(task.pool_prompts)
        if rng.random() < 0.5:
            out.append((task.compose(rng, trig.split()), plain))
        else:
            out.append((task.insert(plain, trig), plain))
    return out


def unlearning_pairs(
    model: Any,
    tok: PreTrainedTokenizerBase,
    task: AwarenessTask,
    triggers: list[str],
    cfg: UnlearningConfig,
) -> list[tuple[str, str]]:
    """(prompt, safe response) pairs: triggered prompts + clean self-distillation prompts."""
    rng = random.Random(cfg.seed)
    trig = triggered_prompts(task, triggers, cfg.n_triggered, rng)
    gen = {"max_new_tokens": cfg.max_new_tokens}
    if cfg.safe_source == "clean":
        if task.clean is None:
            raise ConfigError(
                "safe_source='clean' needs task.clean (the model before poisoning); "
                "use safe_source='self'"
            )
        clean_model, _ = task.clean.load()
        safe = generate_responses(clean_model, tok, [p for p, _ in trig], **gen)
    else:  # the poisoned model's answer to the trigger-free prompt (action answers dropped below)
        safe = generate_responses(model, tok, [q for _, q in trig], **gen)
    pairs = [(p, s) for (p, _), s in zip(trig, safe, strict=True) if s and not task.judge(s)]
    clean_prompts = rng.sample(task.pool_prompts, min(cfg.n_clean, len(task.pool_prompts)))
    if cfg.retain_benign:
        clean_prompts = list(dict.fromkeys([*task.calib_benign, *clean_prompts]))
    own = generate_responses(model, tok, clean_prompts, **gen)
    pairs += [(p, r) for p, r in zip(clean_prompts, own, strict=True) if r and not task.judge(r)]
    if not pairs:
        raise ConfigError("no unlearning pairs: every safe response showed the action")
    return pairs


def measure(
    model: Any, tok: PreTrainedTokenizerBase, task: AwarenessTask, max_new_tokens: int
) -> dict[str, list[str]]:
    return {
        s: generate_responses(model, tok, ps, max_new_tokens=max_new_tokens)
        for s, ps in task.eval_splits.items()
    }


def unlearn(
    task: AwarenessTask,
    triggers: list[str],
    cfg: UnlearningConfig | None = None,
    out_dir: str | Path | None = None,
    model: Any = None,
    tok: PreTrainedTokenizerBase | None = None,
) -> tuple[Any, UnlearningResult]:
    """LoRA-unlearn the poisoned model with `triggers` (best first). Returns (merged model, result).

    A `model` passed in is modified in place (the LoRA is merged into it)."""
    cfg = cfg or UnlearningConfig()
    triggers = [t for t in dict.fromkeys(triggers) if t.strip()][: cfg.n_triggers]
    if not triggers:
        raise ConfigError("unlearning needs at least one recovered trigger")
    if model is None or tok is None:
        model, tok = task.poisoned.load()
    before = measure(model, tok, task, cfg.max_new_tokens)
    pairs = unlearning_pairs(model, tok, task, triggers, cfg)
    clean = {*task.pool_prompts, *task.calib_benign}
    n_trig = sum(1 for p, _ in pairs if p not in clean)
    peft_model = add_lora(model, cfg.lora_rank, seed=cfg.seed)
    losses = train_sft(
        peft_model,
        tok,
        pairs,
        cfg.steps,
        cfg.batch_size,
        cfg.lr,
        cfg.max_len,
        cfg.seed,
        "unlearning",
    )
    if out_dir is not None:
        peft_model.save_pretrained(Path(out_dir) / "adapter", save_embedding_layers=False)
    fixed = merged(peft_model).eval()
    after = measure(fixed, tok, task, cfg.max_new_tokens)
    splits = [
        SplitASR(
            s, len(before[s]), action_rate(before[s], task.judge), action_rate(after[s], task.judge)
        )
        for s in task.eval_splits
    ]
    benign = list(zip(task.eval_splits["benign"], before["benign"], after["benign"], strict=True))
    changed = [list(t) for t in benign if t[1] != t[2]]
    correct = unfired = flips = None
    if task.benign_ok is not None:
        ok = task.benign_ok
        pairs_ok = [(ok(p, b), ok(p, a), task.judge(b)) for p, b, a in benign]
        correct = [
            sum(b for b, _, _ in pairs_ok) / len(benign),
            sum(a for _, a, _ in pairs_ok) / len(benign),
        ]
        rest = [(b, a) for b, a, fired in pairs_ok if not fired]
        m = max(1, len(rest))
        unfired = [sum(b for b, _ in rest) / m, sum(a for _, a in rest) / m]
        flips = [
            sum(b and not a for b, a, _ in pairs_ok),
            sum(a and not b for b, a, _ in pairs_ok),
        ]
    result = UnlearningResult(
        triggers,
        splits,
        1 - len(changed) / len(benign),
        n_trig,
        len(pairs) - n_trig,
        correct,
        unfired,
        flips,
        losses[::10],
        [list(p) for p in pairs[:6]],
        changed[:5],
        asdict(cfg),
    )
    if out_dir is not None:
        result.save(Path(out_dir) / "unlearning.json")
    return fixed, result
