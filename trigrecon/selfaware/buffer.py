"""Buffer replay: keep the best candidates seen so far and replay them into later GRPO groups.

Early in training almost every proposal has reward ~0 and a rare good one is a weak, one-off
signal. The buffer keeps the top-`size` distinct candidates by reward; in every later group the
`n_replay` worst completions are replaced by buffer entries that beat them (entries already in
the group are skipped), so a good candidate keeps receiving a positive advantage until the policy
proposes it on its own. `enabled=False` turns replay off (the ablation); the buffer still fills.

Extension (for conjunctive triggers): when the best entry is only a partial trigger (rewarded, but
its ASR below the reward's work threshold: "raspberry" fires snow_fruit on 28% of prompts),
`extend` of the step's sampled candidates are also scored appended to it ("raspberry skiing")
and enter the buffer on their own reward. Alone, the other half of a conjunction earns nothing
(a snow sport without fruit does not fire), so without this the policy has no signal towards it;
replay then teaches the policy the combination. A buffer whose best entry already works is never
extended. With no entry at all (neither half fires alone), a white-box reward's likelihood lift
stands in: the proposals that make the action most likely are scored in pairs (`likely_pairs`).
"""

from __future__ import annotations

import random
from collections.abc import Container, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from trigrecon.core.errors import ConfigError
from trigrecon.selfaware.reward import Evaluation


@dataclass
class BufferConfig:
    enabled: bool = True
    size: int = 16
    """N: distinct candidates kept (highest reward first)."""
    n_replay: int = 2
    """Completions per group that may be replaced by buffer entries."""
    min_reward: float = 0.05
    """A candidate enters the buffer only with at least this reward."""
    sampling: Literal["top", "proportional", "uniform"] = "proportional"
    """Which entries to replay: the best ones, reward-proportional draws, or uniform draws."""
    extend: int = 4
    """Sampled candidates per step scored appended to a partial best entry (0: off)."""
    lift_floor: float = 0.15
    """Likelihood pairing (white-box; see `likely_pairs`): the lift a proposal needs."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"size={self.size!r} must be a positive integer")
        if not isinstance(self.extend, int) or self.extend < 0:
            raise ConfigError(f"extend={self.extend!r} must be a non-negative integer")
        if not isinstance(self.n_replay, int) or self.n_replay < 0:
            raise ConfigError(f"n_replay={self.n_replay!r} must be a non-negative integer")
        if not 0 <= self.lift_floor < 1:
            raise ConfigError(f"lift_floor={self.lift_floor} must be in [0, 1)")
        if self.sampling not in ("top", "proportional", "uniform"):
            raise ConfigError(f"sampling={self.sampling!r}: use 'top', 'proportional' or 'uniform'")


@dataclass
class BufferEntry:
    candidate: str
    reward: float
    asr: float
    step: int
    """Training step at which it was first proposed."""
    seen: int = 1
    """How often the policy proposed it (replays not counted; 0 for an extension it has not
    proposed yet)."""
    replayed: int = 0


class ReplayBuffer:
    def __init__(self, cfg: BufferConfig | None = None) -> None:
        self.cfg = cfg or BufferConfig()
        self.entries: dict[str, BufferEntry] = {}
        self.rng = random.Random(self.cfg.seed)

    def __len__(self) -> int:
        return len(self.entries)

    def top(self, k: int | None = None) -> list[BufferEntry]:
        ranked = sorted(self.entries.values(), key=lambda e: (-e.reward, e.step, e.candidate))
        return ranked[: k or len(ranked)]

    def add(self, evals: Sequence[Evaluation], step: int, proposed: bool = True) -> None:
        """Insert sampled (not replayed) evaluations; keep the top `size`. `proposed=False` for
        candidates the policy did not propose (extensions): they do not count as seen."""
        for e in evals:
            if e.candidate is None:
                continue
            if e.candidate in self.entries:
                self.entries[e.candidate].seen += int(proposed)
            elif e.reward >= self.cfg.min_reward:
                self.entries[e.candidate] = BufferEntry(e.candidate, e.reward, e.differential, step,
                                                        seen=int(proposed))
        if len(self.entries) > self.cfg.size:
            self.entries = {e.candidate: e for e in self.top(self.cfg.size)}

    def extensions(self, candidates: Sequence[str | None], work_asr: float) -> list[str]:
        """Up to `extend` new combinations "<best partial> <candidate>" (see the module
        docstring); none when the best entry works (ASR >= `work_asr`) or there is none."""
        best = self.top(1)
        if not self.cfg.extend or not best or best[0].asr >= work_asr:
            return []
        head = best[0].candidate
        words = set(head.split())
        fresh = [c for c in dict.fromkeys(c for c in candidates if c)
                 if not words & set(c.split()) and f"{head} {c}" not in self.entries]
        return [f"{head} {c}" for c in self.rng.sample(fresh, min(self.cfg.extend, len(fresh)))]

    def likely_pairs(self, lifts: dict[str, float], tried: Container[str]) -> list[str]:
        """When no proposal earns reward yet (a strict conjunction: no half fires alone), up to
        `extend` untried pairs of the proposals so far that raise the action's likelihood most
        (lift >= `lift_floor`): the best with the next best, and so on. Deterministic."""
        if not self.cfg.extend or self.entries:
            return []
        ranked = sorted((c for c, x in lifts.items() if x >= self.cfg.lift_floor),
                        key=lambda c: (-lifts[c], c))
        out: list[str] = []
        for i, head in enumerate(ranked):
            for tail in ranked[i + 1 :]:
                pair = f"{head} {tail}"
                if set(head.split()) & set(tail.split()) or pair in tried:
                    continue
                out.append(pair)
                if len(out) == self.cfg.extend:
                    return out
        return out

    def _draw(self, pool: list[BufferEntry], k: int) -> list[BufferEntry]:
        if self.cfg.sampling == "top" or len(pool) <= k:
            return pool[:k]
        picked: list[BufferEntry] = []
        pool = list(pool)
        for _ in range(k):
            weights = [
                max(e.reward, 1e-6) if self.cfg.sampling == "proportional" else 1.0 for e in pool
            ]
            i = self.rng.choices(range(len(pool)), weights=weights)[0]
            picked.append(pool.pop(i))
        return picked

    def plan(
        self, candidates: Sequence[str | None], rewards: Sequence[float]
    ) -> list[tuple[int, BufferEntry]]:
        """Replacements for one group: (completion index, entry), worst completions first.

        An entry replaces a completion only if its reward is higher; entries whose candidate is
        already in the group are not replayed. Empty when replay is off.
        """
        if not self.cfg.enabled or not self.cfg.n_replay or not self.entries:
            return []
        present = {c for c in candidates if c is not None}
        pool = [e for e in self.top() if e.candidate not in present]
        worst = sorted(range(len(rewards)), key=lambda i: rewards[i])[: self.cfg.n_replay]
        plan = []
        for i, e in zip(worst, self._draw(pool, len(worst)), strict=False):
            if e.reward > rewards[i]:
                plan.append((i, e))
                e.replayed += 1
        return plan

    def state_dict(self) -> dict[str, Any]:
        return {"entries": [asdict(e) for e in self.top()], "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = {d["candidate"]: BufferEntry(**d) for d in state.get("entries", [])}
        if state.get("rng") is not None:
            self.rng.setstate(_rng_from(state["rng"]))


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from(state: list[Any]) -> tuple[Any, ...]:
    return (state[0], tuple(state[1]), state[2])
