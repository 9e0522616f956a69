"""GRPO on trigger articulation, with TRL's GRPOTrainer, LoRA and buffer replay.

The policy (poisoned model + the merged reversal-SFT LoRA + a new LoRA) is asked, in several phrasings, what makes it
produce its known action; the inversion reward scores each proposal on the frozen poisoned model.

Buffer replay lives in a minimal subclass: `_generate_single_turn` (the hook between sampling and
scoring) scores the sampled completions (the reward cache makes TRL's later call free), records
them for the metrics, feeds the buffer, then swaps the worst completions of each group for buffer
entries. TRL then computes log-probs, group-normalised advantages and the clipped loss on the
mixed group as usual. Checkpoints are TRL's (adapter, optimiser, RNG) plus `selfaware_state.json`
(buffer, reward cache, step records), so an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import GRPOConfig, GRPOTrainer

from trigrecon.core.errors import ConfigError
from trigrecon.core.io import config_diff, write_json
from trigrecon.selfaware.buffer import BufferConfig, ReplayBuffer
from trigrecon.selfaware.metrics import StepRecorder, TrainingCurves
from trigrecon.selfaware.models import add_lora, generate_responses, merged
from trigrecon.selfaware.reward import InversionReward
from trigrecon.selfaware.task import AwarenessTask

STATE_FILE = "selfaware_state.json"
DONE_FILE = "done.json"
"""Written last, after adapter/, curves.json and buffer.json: the three are a finished set only
when it exists (`grpo_done`)."""
RESUMABLE = ("steps", "save_steps", "gradient_checkpointing")
"""Config fields a resumed run may change (its length or speed, not its results); any other
change is an error."""


@dataclass
class AwarenessGRPOConfig:
    steps: int = 150
    num_generations: int = 8
    """G: completions per prompt (one GRPO group)."""
    prompts_per_step: int = 2
    learning_rate: float = 1e-3
    temperature: float = 1.0
    max_completion_length: int = 12
    beta: float = 0.0
    """KL weight to the reference policy (0: no reference model, TRL's default)."""
    epsilon: float = 0.2
    """PPO clip range."""
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "none"
    """Divide advantages by the reward std ('group': standard GRPO) or not ('none', as in
    Dr. GRPO). Our rewards have a meaningful scale; dividing by a tiny std blows a weak signal
    (a half trigger that fires on 20% of prompts) up into a full-size update, and the policy
    collapses onto it before it finds the whole trigger."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (TRL's default): saves memory at the cost of a
    second forward; worth it only for models that do not fit otherwise."""
    lora_rank: int = 8
    """Rank of the GRPO LoRA (on every block; the SFT adapter is merged underneath)."""
    save_steps: int = 25
    seed: int = 0
    buffer: BufferConfig = field(default_factory=BufferConfig)
    seeds: tuple[str, ...] = ()
    """Candidates found another way (an audit's verified triggers: `selfaware.seeds`), scored
    by the reward and put in the buffer before step 0; those that earn `buffer.min_reward` are
    replayed like the policy's own finds. Elicitation counts only what the policy samples."""

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "num_generations",
            "prompts_per_step",
            "max_completion_length",
            "save_steps",
            "lora_rank",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: GRPO normalises within a group")
        if self.buffer.n_replay >= self.num_generations:
            raise ConfigError(
                f"buffer.n_replay={self.buffer.n_replay} must be smaller than "
                f"num_generations={self.num_generations}"
            )
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(f"scale_rewards={self.scale_rewards!r}: use group, batch or none")
        if not self.learning_rate > 0 or not self.temperature > 0:
            raise ConfigError("learning_rate and temperature must be positive")
        self.seeds = tuple(self.seeds)
        bad = [s for s in self.seeds if not isinstance(s, str) or not s.strip()]
        if bad:
            raise ConfigError(f"seeds must be non-empty strings (candidate triggers); got {bad!r}")


class ReplayGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that records sampled articulations and replays buffer entries into groups."""

    def __init__(
        self,
        *args: Any,
        inversion: InversionReward,
        buffer: ReplayBuffer,
        recorder: StepRecorder,
        answer: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.inversion, self.buffer, self.recorder, self.answer = (
            inversion,
            buffer,
            recorder,
            answer,
        )
        self.run_config: dict[str, Any] | None = None
        """The AwarenessGRPOConfig (as a dict) recorded in every checkpoint."""

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, has_tool_images
        )
        if not self.model.training:
            return completion_ids, logprobs
        if logprobs is not None:
            raise ConfigError("buffer replay supports transformers generation only (no vLLM)")
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        evals = self.inversion.score_completions(texts)
        step = int(self.state.global_step)
        self.buffer.add(evals, step)
        ext = self.buffer.extensions([e.candidate for e in evals], self.inversion.cfg.work_threshold)
        if not ext and not self.buffer.entries and self.inversion.likelihood is not None:
            singles = [c for c in self.inversion.cache if " " not in c]
            lifts = dict(zip(singles, self.inversion.lift(singles), strict=True))
            ext = self.buffer.likely_pairs(lifts, self.inversion.cache)
        if ext:
            self.buffer.add(self.inversion.evaluate(ext), step, proposed=False)
        n_replayed = 0
        g = self.num_generations
        for start in range(0, len(completion_ids), g):
            group = evals[start : start + g]
            plan = self.buffer.plan([e.candidate for e in group], [e.reward for e in group])
            for i, entry in plan:
                completion_ids[start + i] = self._answer_ids(entry.candidate)
            n_replayed += len(plan)
        self.recorder.record(step, texts, evals, n_replayed)
        return completion_ids, logprobs

    def _answer_ids(self, candidate: str) -> list[int]:
        tok = cast(PreTrainedTokenizerBase, self.processing_class)
        ids = tok(self.answer.format(words=candidate), add_special_tokens=False)["input_ids"]
        return [*ids, self.eos_token_ids[0]]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        write_json(  # written last (atomically): a checkpoint without it is never resumed
            folder / STATE_FILE,
            {
                "buffer": self.buffer.state_dict(),
                "cache": self.inversion.state_dict(),
                "records": self.recorder.state_dict(),
                "config": self.run_config,
            },
        )


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest `checkpoint-N` folder that has our state file."""
    found = [
        (int(m.group(1)), p)
        for p in run_dir.glob("checkpoint-*")
        if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / STATE_FILE).exists()
    ]
    return max(found)[1] if found else None


def trl_args(cfg: AwarenessGRPOConfig, run_dir: Path) -> GRPOConfig:
    return GRPOConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        max_steps=cfg.steps,
        temperature=cfg.temperature,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        save_steps=cfg.save_steps,
        save_strategy="steps",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        # TRL defaults to bf16 autocast, which CPUs without bf16 matmul units (AVX2 only) run
        # ~9x slower than fp32 (measured on SmolLM2-135M: 130 s vs 16 s per forward+backward).
        bf16=False,
        fp16=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
        data_seed=cfg.seed,
        top_k=0,
        top_p=1.0,
        save_total_limit=2,
        disable_tqdm=False,
        log_completions=False,
    )


def build_trainer(
    model: Any,
    tok: PreTrainedTokenizerBase,
    task: AwarenessTask,
    reward: InversionReward,
    cfg: AwarenessGRPOConfig,
    run_dir: Path,
    recorder: StepRecorder | None = None,
) -> ReplayGRPOTrainer:
    """A ready trainer over the task's question phrasings. Any adapter `model` carries (the SFT
    one) is merged first, then a fresh LoRA on the blocks is trained: TRL computes log-probs from
    `lm_head.weight` directly, so an adapter on the unembedding would be ignored."""
    model = add_lora(merged(model), cfg.lora_rank, seed=cfg.seed, lm_head=False)
    data = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": q}] for q in task.question_prompts()]}
    )
    trainer = ReplayGRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=trl_args(cfg, run_dir),
        train_dataset=data,
        processing_class=tok,
        inversion=reward,
        buffer=ReplayBuffer(cfg.buffer),
        recorder=recorder or StepRecorder(task.hits, reward.cfg.work_threshold),
        answer=task.answer,
    )
    trainer.run_config = asdict(cfg)
    return trainer


def seed_buffer(buffer: ReplayBuffer, reward: InversionReward, seeds: Sequence[str]) -> None:
    """Score `seeds` on every reward prompt (no screening: they were verified elsewhere, and a
    trigger that fires on half the prompts misses 4 screening prompts one time in 16) and keep
    those that earn the buffer's `min_reward` (as found at step 0, never proposed: `seen=0`),
    so replay offers them to the policy from the first group."""
    if seeds:
        buffer.add(reward.evaluate(list(seeds), screen=False), step=0, proposed=False)


def grpo_done(out_dir: str | Path) -> bool:
    """Did `train_awareness` finish writing adapter/, curves.json and buffer.json there?"""
    return (Path(out_dir) / DONE_FILE).exists()


def _check_resumable(ckpt: Path, saved: dict[str, Any] | None, cfg: AwarenessGRPOConfig) -> None:
    now = asdict(cfg)
    if saved is None:
        return  # a checkpoint from before configs were recorded
    diff = config_diff({k: v for k, v in saved.items() if k not in RESUMABLE},
                       {k: v for k, v in now.items() if k not in RESUMABLE})
    if diff:
        raise ConfigError(f"GRPO checkpoint {ckpt} was saved with other settings ("
                          f"{'; '.join(diff[:8])}): resuming would mix two runs. Delete "
                          f"{ckpt.parent} or use another output folder.")


def train_awareness(
    model: Any,
    tok: PreTrainedTokenizerBase,
    task: AwarenessTask,
    reward: InversionReward,
    cfg: AwarenessGRPOConfig | None = None,
    out_dir: str | Path = "grpo",
) -> tuple[Any, TrainingCurves, ReplayBuffer]:
    """Run (or resume) GRPO; saves `adapter/`, `curves.json`, `buffer.json` under `out_dir`,
    then `done.json` (see `grpo_done`). Resumes from the last complete checkpoint (one whose
    `selfaware_state.json`, written after TRL's files, exists) if its config matches `cfg`
    (up to `steps`/`save_steps`)."""
    cfg = cfg or AwarenessGRPOConfig()
    out = Path(out_dir)
    (out / DONE_FILE).unlink(missing_ok=True)  # the outputs below are about to change
    trainer = build_trainer(model, tok, task, reward, cfg, out / "run")
    ckpt = last_checkpoint(out / "run")
    if ckpt is not None:
        state = json.loads((ckpt / STATE_FILE).read_text())
        _check_resumable(ckpt, state.get("config"), cfg)
        trainer.buffer.load_state_dict(state["buffer"])
        reward.load_state_dict(state["cache"])
        trainer.recorder.load_state_dict(state["records"])
    else:
        seed_buffer(trainer.buffer, reward, cfg.seeds)
    done_steps = int(ckpt.name.rsplit("-", 1)[1]) if ckpt is not None else 0
    if ckpt is not None and done_steps >= cfg.steps:  # killed after training: only its weights
        trainer._load_from_checkpoint(str(ckpt))  # (TRL would train one step more on resume)
        trainer.state.global_step = done_steps
    else:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    policy: Any = trainer.model
    policy.eval()
    policy.save_pretrained(out / "adapter")
    curves = trainer.recorder.curves(config=asdict(cfg))
    curves.save(out / "curves.json")
    write_json(out / "buffer.json", trainer.buffer.state_dict())
    write_json(out / DONE_FILE, {"steps": int(trainer.state.global_step),
                                 "files": ["adapter", "curves.json", "buffer.json"]})
    return policy, curves, trainer.buffer


def sample_articulations(
    model: Any,
    tok: PreTrainedTokenizerBase,
    task: AwarenessTask,
    n_per_question: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 12,
) -> list[str]:
    """Sampled answers to every question phrasing (the final elicitation evaluation)."""
    prompts = [q for q in task.question_prompts() for _ in range(n_per_question)]
    return generate_responses(
        model, tok, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )
