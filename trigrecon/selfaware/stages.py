"""Resumable stages that notice changed settings.

Each stage of `run_selfaware` keeps a `stage.json` in its folder: the stage's *record* (its own
config, digests of the task's inputs it reads, and the records of the stages it builds on) and
whether it finished. On a rerun a finished stage with the same record is reused; an unfinished
one with the same record resumes (GRPO from its last checkpoint) or reruns; a stage whose
record differs stops the run with a StaleStageError that names the differing fields, unless
`overwrite=True` (CLI `--force`), which deletes that stage's folder and reruns it. Because a
record contains its upstream records, a rerun upstream stage makes every later stage stale too.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trigrecon.core.io import config_diff, weights_digest
from trigrecon.core.stages import (  # noqa: F401 - re-exported
    STAGE_FILE,
    StaleStageError,
    close_stage,
    digest,
    open_stage,
)
from trigrecon.selfaware.models import ModelSource
from trigrecon.selfaware.task import AwarenessTask


def task_record(task: AwarenessTask) -> dict[str, Any]:
    """What of the task a stage's result depends on: the action, the models, and digests of every
    prompt set and of the key words of the pool's first prompts (other functions, such as
    `insert`, cannot be compared and are not recorded)."""
    return {
        "name": task.name,
        "action": task.action,
        "poisoned": source_record(task.poisoned),
        "clean": None if task.clean is None else source_record(task.clean),
        "reward_prompts": digest(task.reward_prompts),
        "pool_prompts": digest(task.pool_prompts),
        "eval_splits": digest(task.eval_splits),
        "calib_benign": digest(task.calib_benign),
        "questions": digest(list(task.questions)),
        "answer": task.answer,
        "vocab": digest(sorted(task.vocab)),
        "keywords": digest([task.keywords(p) for p in task.pool_prompts[:256]]),
    }


def source_record(src: ModelSource) -> list[str | None]:
    """A model by its paths and its adapter's weights digest: an adapter rebuilt at the same path
    makes the stages that used the old one stale (the base is named by path: hashing a pretrained
    model on every run would cost more than the check is worth)."""
    adapter = src.adapter
    digest_ = weights_digest(adapter) if adapter is not None and Path(adapter).is_dir() else None
    return [str(src.base), str(adapter), digest_]


def stage_records(task: AwarenessTask, cfg: Any) -> dict[str, dict[str, Any]]:
    """Each stage's record: its config, the task's inputs and its upstream stages' records."""
    t = task_record(task)
    reward = {"reward": asdict(cfg.reward), "differential": cfg.differential, "task": t}
    sft = {"sft": asdict(cfg.sft), "task": t}
    grpo = {"grpo": asdict(cfg.grpo), "reward": reward, "sft": sft}
    return {
        "reward": reward,
        "sft": sft,
        "grpo": grpo,
        "unlearning": {"unlearning": asdict(cfg.unlearning), "grpo": grpo,
                       "final_samples": cfg.final_samples, "n_recovered": cfg.n_recovered},
        "guardrail": {"guardrail": asdict(cfg.guardrail), "n_calib_per": cfg.n_calib_per,
                      "grpo": grpo, "final_samples": cfg.final_samples,
                      "n_recovered": cfg.n_recovered},
    }


def load_reward_cache(reward: Any, out: Path, record: dict[str, Any]) -> None:
    """Reuse the saved ASR cache only if it was computed with this reward and task."""
    path = out / "reward_cache.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if isinstance(saved, dict) and not config_diff(saved.get("record"), record):
            reward.load_state_dict(saved["state"])
