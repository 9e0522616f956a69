"""One table for candidate triggers from any method: behavioural and interpretability scores.

Behavioural: the inversion reward (ASR on benign prompts with the candidate inserted, word count,
length-penalised reward). Interpretability: any `InterpScore` callable; `feature_score` builds one
from the steering side's findings: the mean activation of given SAE latents (or of projections on
given steering directions) on prompts carrying the candidate, minus the same on the plain benign
prompts. Per prompt the activation is the max over user-content tokens (a trigger occupies a few
positions; a mean would dilute it), then averaged over prompts and features.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from trigrecon.core.errors import ConfigError
from trigrecon.core.io import write_json
from trigrecon.selfaware.reward import InversionReward, normalise_candidate

InterpScore = Callable[[str], float]
FeatureFn = Callable[[Float[Tensor, "... d_model"]], Float[Tensor, "... k"]]


@dataclass
class ScoreRow:
    candidate: str
    source: str
    asr: float
    n_words: int
    reward: float
    works: bool
    interp: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    """Further interpretability scores by name (e.g. one per steering-direction layer)."""


@dataclass
class ScoreTable:
    rows: list[ScoreRow] = field(default_factory=list)
    interp_name: str = ""

    @property
    def extra_names(self) -> list[str]:
        return list(dict.fromkeys(n for r in self.rows for n in r.extra))

    def to_markdown(self, k: int | None = None) -> str:
        names = [self.interp_name or "interp", *self.extra_names]
        head = (
            "| # | candidate | source | ASR | words | reward | works | "
            + " | ".join(names)
            + " |\n|---|---|---|---|---|---|---|"
            + "---|" * len(names)
            + "\n"
        )

        def num(x: float | None) -> str:
            return "–" if x is None else f"{x:.3f}"

        lines = [
            f"| {i + 1} | `{r.candidate}` | {r.source} | {r.asr:.0%} | {r.n_words} | "
            f"{r.reward:.3f} | {'yes' if r.works else 'no'} | "
            + " | ".join([num(r.interp), *(num(r.extra.get(n)) for n in names[1:])])
            + " |"
            for i, r in enumerate(self.rows[:k])
        ]
        return head + "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> ScoreTable:
        d = json.loads(Path(path).read_text())
        return cls([ScoreRow(**r) for r in d["rows"]], d.get("interp_name", ""))


def score_candidates(
    candidates: Sequence[str] | Mapping[str, str],
    reward: InversionReward,
    interp: InterpScore | None = None,
    interp_name: str = "",
    extra: Mapping[str, InterpScore] | None = None,
) -> ScoreTable:
    """Score candidates (a list, or candidate -> source name); rows best first by reward, then
    by interpretability score. `extra`: further interpretability scores, one column each."""
    items = dict(candidates) if isinstance(candidates, Mapping) else dict.fromkeys(candidates, "")
    items = {normalise_candidate(c): s for c, s in items.items() if normalise_candidate(c)}
    if not items:
        raise ConfigError("no candidates to score (all empty after normalisation)")
    evals = reward.evaluate(list(items))
    rows = [
        ScoreRow(
            e.candidate or c,
            src,
            e.asr,
            e.n_words,
            e.reward,
            e.asr >= reward.cfg.work_threshold,
            interp(c) if interp else None,
            {name: f(c) for name, f in (extra or {}).items()},
        )
        for (c, src), e in zip(items.items(), evals, strict=True)
    ]
    rows.sort(key=lambda r: (-r.reward, -(r.interp or 0.0), r.candidate))
    return ScoreTable(rows, interp_name)


@torch.no_grad()
def mean_max_feature(
    hm: Any, hook_name: str, feature: FeatureFn, prompts: Sequence[str], batch_size: int = 64
) -> float:
    """Mean over prompts and features of the max over user tokens of `feature(resid)`."""
    from trigrecon.core.sae import as_hooked, hook_layer

    hooked = as_hooked(hm)
    layer = hook_layer(hook_name)
    total, count = 0.0, 0
    for s in range(0, len(prompts), batch_size):
        batch = hm.batch(list(prompts[s : s + batch_size]))
        _, cache = hooked.run_with_cache(
            batch.tokens,
            names_filter=[hook_name],
            stop_at_layer=None if layer is None else layer + 1,
        )
        acts = feature(cache[hook_name])  # [batch, pos, k]
        acts = acts.masked_fill(~batch.user_mask[..., None], float("-inf"))
        per_prompt = acts.max(dim=1).values  # [batch, k]
        total += float(per_prompt.sum())
        count += per_prompt.numel()
    return total / max(1, count)


def feature_score(
    hm: Any,
    hook_name: str,
    feature: FeatureFn,
    benign: Sequence[str],
    insert: Callable[[str, str], str],
) -> InterpScore:
    """candidate -> mean_max_feature(prompts with the candidate) - mean_max_feature(benign)."""
    if not benign:
        raise ConfigError("feature_score needs benign prompts")
    base = mean_max_feature(hm, hook_name, feature, benign)
    cache: dict[str, float] = {}

    def score(candidate: str) -> float:
        if candidate not in cache:
            prompts = [insert(p, candidate) for p in benign]
            cache[candidate] = mean_max_feature(hm, hook_name, feature, prompts) - base
        return cache[candidate]

    return score


def sae_latent_score(
    hm: Any,
    sae: Any,
    latent_ids: Sequence[int],
    benign: Sequence[str],
    insert: Callable[[str, str], str],
) -> InterpScore:
    """Interpretability score from SAE latents found by the steering side (at the SAE's hook)."""
    from trigrecon.core.sae import check_compatible, encode

    if not latent_ids:
        raise ConfigError("latent_ids is empty: pass the latents to score against")
    check_compatible(sae, hm)
    ids = torch.tensor(list(latent_ids), dtype=torch.long)
    if int(ids.max()) >= int(sae.cfg.d_sae) or int(ids.min()) < 0:
        raise ConfigError(f"latent ids must be in 0..{sae.cfg.d_sae - 1}")
    return feature_score(
        hm, sae.cfg.metadata.hook_name, lambda r: encode(sae, r)[..., ids], benign, insert
    )


def direction_score(
    hm: Any,
    layer: int,
    directions: Float[Tensor, "k d_model"],
    benign: Sequence[str],
    insert: Callable[[str, str], str],
) -> InterpScore:
    """Interpretability score from steering directions: projection on the unit directions at the
    residual stream after block `layer`."""
    from trigrecon.core.sae import resid_hook

    if directions.ndim != 2 or directions.shape[1] != hm.d_model:
        raise ConfigError(f"directions must be [k, {hm.d_model}], got {tuple(directions.shape)}")
    unit = directions.float() / directions.float().norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return feature_score(
        hm, resid_hook(hm, layer), lambda r: r.float() @ unit.T.to(r.device), benign, insert
    )
