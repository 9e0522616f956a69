"""Metrics over GRPO training: trigger elicitation accuracy, reward curves and the emergence curve.

Per training step, over the articulations the policy *sampled* (buffer replays excluded):
  hit_rate   share that name the planted trigger (ground truth `task.hits`: e.g. a member of every
             category of the trigger expression),
  work_rate  share whose candidate works as a trigger (inversion-reward ASR >= work threshold),
  valid_rate share with a parsable candidate; mean/max reward.
`TrainingCurves` adds moving averages, steps-to-threshold and the emergence point (the largest
jump of the moving average between consecutive windows).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trigrecon.core.io import write_json
from trigrecon.selfaware.reward import Evaluation, InversionReward

KEYS = ("hit_rate", "work_rate", "valid_rate", "mean_reward", "max_reward")


@dataclass
class StepRecord:
    step: int
    """Optimiser steps taken before these articulations were sampled."""
    n: int
    valid_rate: float
    hit_rate: float | None
    work_rate: float
    mean_reward: float
    max_reward: float
    n_replayed: int = 0
    top: list[list[Any]] = field(default_factory=list)
    """Most frequent candidates as [candidate, count]."""


def summarise(
    evals: Sequence[Evaluation], hits: Callable[[str], bool] | None, threshold: float
) -> dict[str, Any]:
    n = len(evals)
    cands = [e.candidate for e in evals if e.candidate is not None]
    return dict(
        n=n,
        valid_rate=len(cands) / n,
        hit_rate=None if hits is None else sum(bool(hits(c)) for c in cands) / n,
        work_rate=sum(e.differential >= threshold for e in evals if e.candidate is not None) / n,
        mean_reward=sum(e.reward for e in evals) / n,
        max_reward=max(e.reward for e in evals),
        top=[[c, k] for c, k in Counter(cands).most_common(3)],
    )


class StepRecorder:
    def __init__(self, hits: Callable[[str], bool] | None, work_threshold: float = 0.5) -> None:
        self.hits, self.threshold = hits, work_threshold
        self.records: list[StepRecord] = []

    def record(
        self, step: int, texts: Sequence[str], evals: Sequence[Evaluation], n_replayed: int = 0
    ) -> StepRecord:
        rec = StepRecord(
            step=step, n_replayed=n_replayed, **summarise(evals, self.hits, self.threshold)
        )
        self.records.append(rec)
        return rec

    def state_dict(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]

    def load_state_dict(self, records: list[dict[str, Any]]) -> None:
        self.records = [StepRecord(**r) for r in records]

    def curves(self, config: dict[str, Any] | None = None) -> TrainingCurves:
        return TrainingCurves(list(self.records), config or {})


@dataclass
class ElicitationEval:
    """Articulations sampled from a (trained) policy, scored."""

    n: int
    hit_rate: float | None
    work_rate: float
    valid_rate: float
    mean_reward: float
    top: list[list[Any]] = field(default_factory=list)
    """[candidate, count, asr] of the most frequent candidates."""


def elicitation(
    texts: Sequence[str], reward: InversionReward, hits: Callable[[str], bool] | None
) -> ElicitationEval:
    evals = reward.score_completions(list(texts))
    s = summarise(evals, hits, reward.cfg.work_threshold)
    asr = {e.candidate: e.asr for e in evals if e.candidate}
    counts = Counter(e.candidate for e in evals if e.candidate)
    top = [[c, k, asr[c]] for c, k in counts.most_common(10)]
    return ElicitationEval(
        s["n"], s["hit_rate"], s["work_rate"], s["valid_rate"], s["mean_reward"], top
    )


def moving_average(xs: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


@dataclass
class TrainingCurves:
    records: list[StepRecord]
    config: dict[str, Any] = field(default_factory=dict)
    final: ElicitationEval | None = None

    def series(self, key: str = "hit_rate") -> list[float]:
        if key not in KEYS:
            raise KeyError(f"unknown series {key!r}; known: {', '.join(KEYS)}")
        return [float(getattr(r, key) or 0.0) for r in self.records]

    @property
    def steps(self) -> list[int]:
        return [r.step for r in self.records]

    def steps_to(
        self, threshold: float = 0.5, key: str = "hit_rate", window: int = 5
    ) -> int | None:
        """First step at which the moving average of `key` reaches `threshold` (None: never)."""
        avg = moving_average(self.series(key), window)
        return next((s for s, a in zip(self.steps, avg, strict=True) if a >= threshold), None)

    def emergence(self, key: str = "hit_rate", window: int = 10) -> dict[str, float | int | None]:
        """Where the moving average jumps most: mean over the `window` steps after minus before."""
        xs = self.series(key)
        if len(xs) < 2 * window:
            return {"step": None, "jump": None, "before": None, "after": None}
        best = max(
            range(window, len(xs) - window + 1),
            key=lambda t: sum(xs[t : t + window]) - sum(xs[t - window : t]),
        )
        before = sum(xs[best - window : best]) / window
        after = sum(xs[best : best + window]) / window
        return {"step": self.steps[best], "jump": after - before, "before": before, "after": after}

    def final_rate(self, key: str = "hit_rate", last: int = 10) -> float:
        xs = self.series(key)[-last:]
        return sum(xs) / len(xs) if xs else 0.0

    def save(self, path: str | Path) -> None:
        write_json(path, self)

    @classmethod
    def load(cls, path: str | Path) -> TrainingCurves:
        d = json.loads(Path(path).read_text())
        final = ElicitationEval(**d["final"]) if d.get("final") else None
        return cls([StepRecord(**r) for r in d["records"]], d.get("config", {}), final)
