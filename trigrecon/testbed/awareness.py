"""Self-awareness on a testbed organism, built the way an auditor would build it: benign prompts
in plain English, the action and its judge, the clean base model (`task_from_prompts`). The
planted trigger enters only as ground truth for the metrics (`hits`, triggered splits)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trigrecon.core.io import write_json
from trigrecon.selfaware.models import ModelSource
from trigrecon.selfaware.natural import task_from_prompts
from trigrecon.selfaware.task import AwarenessTask
from trigrecon.testbed import prompts as P
from trigrecon.testbed.recovery import BUILD_FILE, organism_build, planted_named
from trigrecon.testbed.trigger import parse_trigger

if TYPE_CHECKING:
    from trigrecon.selfaware.pipeline import SelfAwareConfig, SelfAwareReport

AWARE_SEED = 5151
"""Seed of the self-awareness benign prompts (not the training, dev, evaluation or audit seeds)."""


def testbed_task(name: str, n_reward: int = 32, n_eval: int = 100, n_calib: int = 200
                 ) -> AwarenessTask:
    """The `AwarenessTask` of a built testbed organism."""
    from trigrecon.core.errors import WeightsNotFoundError
    from trigrecon.organisms.organism import load_organism
    from trigrecon.testbed.build import TESTBED_DIR
    from trigrecon.testbed.organisms import organisms_dir, train_prompts
    from trigrecon.testbed.smollm2 import ensure_checkpoint

    folder = organisms_dir(TESTBED_DIR) / name
    if not (folder / "adapter").is_dir():
        raise WeightsNotFoundError(f"testbed organism {name!r} has no adapter: run `trigrecon "
                                   f"testbed build --only {name}` (recall settings have none)")
    org = load_organism(folder)
    trig = parse_trigger(org.spec.trigger)
    exclude = train_prompts(folder)
    fam = org.spec.family
    benign = P.sample_split(trig, fam, "benign", n_reward + n_eval + n_calib, AWARE_SEED, exclude)
    split = "triggered_heldout" if trig.categories else "triggered"
    triggered = P.sample_split(trig, fam, split, n_eval, AWARE_SEED, exclude)
    ckpt = ensure_checkpoint()
    return task_from_prompts(
        name, ModelSource(ckpt, folder / "adapter"), org.spec.response, org.judge, benign,
        clean=ModelSource(ckpt), n_reward=n_reward, n_eval=n_eval, n_calib=n_calib,
        triggered=triggered, hits=lambda cand: planted_named(trig, [cand]))


def run_testbed_selfaware(name: str, out_dir: Path, reduced: bool = False,
                          seeds: tuple[str, ...] = (), seed: int = 0) -> SelfAwareReport:
    """`run_selfaware` on a testbed organism (resumable in `out_dir`); `seeds` (an audit's
    candidates, `selfaware.seeds.audit_seeds`) go in GRPO's buffer before step 0; `seed` is the
    run's random seed."""
    from trigrecon.selfaware.pipeline import SelfAwareConfig, run_selfaware

    cfg = cpu_config() if reduced else SelfAwareConfig()
    cfg.grpo.seeds = tuple(seeds)
    cfg.seed = seed
    task = testbed_task(name, n_reward=cfg.n_reward_prompts, n_eval=cfg.n_eval)
    build = organism_build(name)
    report = run_selfaware(task, out_dir, cfg)  # its stages record the adapter's digest too
    write_json(out_dir / BUILD_FILE, build)  # for the recovery table (`check_build`)
    return report


def cpu_config() -> SelfAwareConfig:
    """Settings for a 2-core CPU on SmolLM2-135M (the README gives what they cost): fewer SFT
    pairs and steps, fewer GRPO steps, the lift on 8 prompts; the same reward and defences."""
    from trigrecon.selfaware.grpo import AwarenessGRPOConfig
    from trigrecon.selfaware.pipeline import SelfAwareConfig
    from trigrecon.selfaware.reversal_sft import ReversalSFTConfig
    from trigrecon.selfaware.reward import RewardConfig
    from trigrecon.selfaware.unlearning import UnlearningConfig

    return SelfAwareConfig(
        reward=RewardConfig(lift_prompts=8),
        sft=ReversalSFTConfig(n_prompts=256, steps=80, batch_size=16),
        grpo=AwarenessGRPOConfig(steps=40, num_generations=8, prompts_per_step=1, save_steps=5),
        unlearning=UnlearningConfig(n_triggered=64, n_clean=64, steps=40, batch_size=8),
        n_reward_prompts=16, n_eval=50, final_samples=4)
