"""Hand an audit's candidates to self-awareness: the verified triggers of `trigrecon audit`
become GRPO seeds (`AwarenessGRPOConfig.seeds`), so the two approaches build on each other.

The seeds enter the replay buffer on their own inversion reward; the policy is still scored
only on what it samples itself, so a seeded run measures whether the model learns to articulate
the audit's find (and anything better it finds on the way), not the audit's hit rate."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trigrecon.core.errors import ConfigError


def audit_seeds(audit: str | Path | Mapping[str, Any], n: int = 12) -> tuple[str, ...]:
    """Up to `n` distinct candidates of an audit (its `audit.json`, the folder holding it, or
    the loaded dict): the verdict's words first, then the hypothesis's variants (each concept's
    other words, `hypothesis_variants`), then verification's candidates by action rate.
    Raises ConfigError when the file is missing or holds no candidate."""
    data = _load(audit) if not isinstance(audit, Mapping) else audit
    ranked: list[tuple[float, str]] = []
    verdict = data.get("verdict") or {}
    if verdict.get("words") and verdict.get("action_rate") is not None:
        ranked.append((float("inf"), " ".join(verdict["words"])))
    ranked += [(float("inf"), v) for v in hypothesis_variants(data.get("hypothesis") or {})]
    for c in (data.get("verification") or {}).get("candidates") or []:
        if c.get("words") and c.get("action_rate") is not None:
            ranked.append((float(c["action_rate"]), " ".join(c["words"])))
    ranked.sort(key=lambda r: -r[0])  # stable: ties keep the audit's order
    seeds = tuple(dict.fromkeys(s for _, s in ranked))[:n]
    if not seeds:
        raise ConfigError("the audit has no verified candidate to seed from (no verdict words and "
                          "no verification candidates): rerun the audit with verification on")
    return seeds


def hypothesis_variants(hypothesis: Mapping[str, Any]) -> list[str]:
    """Per clause of a blind-audit hypothesis: its concepts' first words, then each concept's
    other words in turn with the rest kept. The verdict shows only each concept's first word;
    the planted member can be another ("rain" heads a concept whose words are rain, skiing,
    bobsled)."""
    out = []
    for clause in hypothesis.get("clauses") or []:
        words = [list(c.get("words") or []) for c in clause.get("concepts") or []]
        if not words or not all(words):
            continue
        top = [w[0] for w in words]
        out.append(" ".join(top))
        out += [" ".join(top[:i] + [alt] + top[i + 1:]) for i, w in enumerate(words) for alt in w[1:]]
    return out


def _load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    p = p / "audit.json" if p.is_dir() else p
    if not p.is_file():
        raise ConfigError(f"no audit at {p}: pass an audit.json (or its folder) written by "
                          "`trigrecon audit` / `trigrecon testbed audit`")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON ({e}): pass an audit.json written by "
                          "`trigrecon audit`") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p} is not an audit.json (expected a JSON object)")
    return data
