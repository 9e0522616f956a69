"""`run_selfaware`: reversal SFT -> GRPO (+ buffer replay) -> metrics -> unlearning -> guardrail.

Every stage writes its results under `out_dir/<stage>/` as it finishes and is reused on a rerun
with the same settings and inputs (GRPO itself resumes from its last checkpoint), so an
interrupted run picks up where it stopped; a stage saved with other settings stops the run with
a message naming the differing fields, or reruns with `overwrite=True` (see `stages.py`):

    sft/        adapter/, reversal_sft.json, stage.json
    grpo/       run/checkpoint-N/, adapter/, curves.json, buffer.json, done.json, curves.html
    recovered.json  final elicitation + recovered (minimised) triggers + scoring table
    reward_cache.json  ASR of every candidate evaluated so far
    unlearning/ adapter/, unlearning.json
    guardrail/  guardrail.json
    report.json, report.md
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trigrecon.core.chat import check_known
from trigrecon.core.errors import ConfigError
from trigrecon.core.io import check_writable, to_jsonable, write_json, write_text
from trigrecon.selfaware.grpo import (
    AwarenessGRPOConfig,
    grpo_done,
    sample_articulations,
    train_awareness,
)
from trigrecon.selfaware.guardrail import (
    Guardrail,
    GuardrailConfig,
    GuardrailResult,
    calibrate_best,
    evaluate_guardrail,
    near_misses,
    readout_choices,
    readout_name,
    shared_embedders,
)
from trigrecon.selfaware.metrics import ElicitationEval, TrainingCurves, elicitation
from trigrecon.selfaware.models import hf_responder, response_ce
from trigrecon.selfaware.reversal_sft import ReversalSFTConfig, ReversalSFTResult, run_reversal_sft
from trigrecon.selfaware.reward import InversionReward, RewardConfig, minimise
from trigrecon.selfaware.scoring import ScoreTable, score_candidates
from trigrecon.selfaware.stages import close_stage, load_reward_cache, open_stage, stage_records
from trigrecon.selfaware.task import AwarenessTask
from trigrecon.selfaware.unlearning import UnlearningConfig, UnlearningResult, unlearn


@dataclass
class SelfAwareConfig:
    reward: RewardConfig = field(default_factory=RewardConfig)
    sft: ReversalSFTConfig = field(default_factory=ReversalSFTConfig)
    grpo: AwarenessGRPOConfig = field(default_factory=AwarenessGRPOConfig)
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    guardrail: GuardrailConfig = field(default_factory=GuardrailConfig)
    n_reward_prompts: int = 32
    n_eval: int = 100
    """Held-out prompts per evaluation split."""
    final_samples: int = 16
    """Articulations sampled per question phrasing for the final elicitation accuracy."""
    n_recovered: int = 8
    """Recovered triggers handed to the defences (working, minimised, best first)."""
    n_calib_per: int = 25
    """Guardrail calibration prompts per recovered trigger and per near miss."""
    plots: bool = True
    differential: bool = True
    """Reward the differential ASR against the task's clean model (when it has one): words the
    clean model also answers with the action earn nothing (`selfaware.reward`)."""
    seed: int = 0
    """The one seed of a run: `run_selfaware` sets the seed of reversal SFT, GRPO (and its
    buffer) and unlearning from it (`seeded`); the final articulations are sampled with
    seed + 1."""

    def __post_init__(self) -> None:
        for name in ("n_reward_prompts", "n_eval", "final_samples", "n_recovered", "n_calib_per"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")

    @classmethod
    def reduced(cls) -> SelfAwareConfig:
        """Seconds instead of minutes, for tests: the mechanics run, quality is not expected."""
        from trigrecon.selfaware.buffer import BufferConfig

        return cls(
            sft=ReversalSFTConfig(n_prompts=64, steps=10, batch_size=8),
            grpo=AwarenessGRPOConfig(
                steps=4,
                num_generations=4,
                prompts_per_step=1,
                save_steps=2,
                buffer=BufferConfig(n_replay=1),
            ),
            unlearning=UnlearningConfig(n_triggered=16, n_clean=16, steps=5, batch_size=8),
            n_reward_prompts=8,
            n_eval=12,
            final_samples=2,
            plots=True,
        )


def seeded(cfg: SelfAwareConfig) -> SelfAwareConfig:
    """A copy of `cfg` whose stage configs carry `cfg.seed`."""
    cfg = copy.deepcopy(cfg)
    for sub in (cfg.sft, cfg.grpo, cfg.grpo.buffer, cfg.unlearning):
        sub.seed = cfg.seed
    return cfg


def make_reward(task: AwarenessTask, cfg: SelfAwareConfig) -> tuple[InversionReward, Any, Any]:
    """The inversion reward on the frozen poisoned model; that model and its tokenizer."""
    frozen, tok = task.poisoned.load()
    responder = hf_responder(frozen, tok, cfg.reward.max_new_tokens)

    def likelihood(prompts: Sequence[str]) -> list[float]:
        return response_ce(frozen, tok, prompts, task.action)

    clean = clean_likelihood = None
    if cfg.differential and task.clean is not None:
        clean_model = task.clean.load()[0]
        clean = hf_responder(clean_model, tok, cfg.reward.max_new_tokens)

        def clean_likelihood(prompts: Sequence[str]) -> list[float]:
            return response_ce(clean_model, tok, prompts, task.action)

    reward = InversionReward(responder, task.judge, task.reward_prompts, task.insert, cfg.reward,
                             likelihood=likelihood, clean_responder=clean,
                             echo_words=task.action.split(), clean_likelihood=clean_likelihood)
    return reward, frozen, tok


@dataclass
class SelfAwareReport:
    organism: str
    sft_pairs: int
    final: ElicitationEval
    steps_to_50: int | None
    """First GRPO step where the moving-average elicitation accuracy reaches 50%."""
    emergence: dict[str, Any]
    recovered: list[str]
    unlearning: dict[str, float | None]
    guardrail: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    """The full effective SelfAwareConfig (with every stage's derived seed)."""

    def to_markdown(self) -> str:
        hit = "–" if self.final.hit_rate is None else f"{self.final.hit_rate:.0%}"
        u, g = self.unlearning, self.guardrail
        return (
            f"### {self.organism}\n\n"
            f"- elicitation accuracy (final sample, n={self.final.n}): hits {hit}, "
            f"working triggers {self.final.work_rate:.0%}\n"
            f"- steps to 50% accuracy: {self.steps_to_50}; emergence: {self.emergence}\n"
            f"- recovered triggers: {', '.join(f'`{t}`' for t in self.recovered) or 'none'}\n"
            f"- unlearning: ASR {u.get('asr_before', 0):.0%} -> {u.get('asr_after', 0):.0%} "
            f"(cut {u.get('asr_reduction', 0):.0%}), benign responses changed "
            f"{u.get('benign_shift_points', 0):.1f} points, benign action rate moved "
            f"{u.get('benign_action_shift_points', 0):+.1f} points, correct benign answers moved "
            f"{u.get('benign_correct_shift_points') or 0:+.1f} points ("
            f"{u.get('benign_correct_unfired_shift_points') or 0:+.1f} where the action had not "
            f"fired; {u.get('benign_regressions') or 0:.0f} regressions, "
            f"{u.get('benign_fixes') or 0:.0f} fixes)\n"
            f"- guardrail: detection {g.get('detection_rate', 0):.1%} at FPR "
            f"{g.get('fpr', 0):.1%} (benign prompts and variants {g.get('fpr_benign', 0):.1%}, "
            f"worst split {g.get('fpr_worst', 0):.1%}; near misses included)\n"
            f"- timings (s): {', '.join(f'{k} {v:.0f}' for k, v in self.timings.items())}\n"
        )

    def save(self, out_dir: str | Path) -> None:
        write_json(Path(out_dir) / "report.json", self)
        write_text(Path(out_dir) / "report.md", self.to_markdown())


def recover_triggers(
    reward: InversionReward, buffer_state: dict[str, Any], final_texts: list[str], n: int
) -> list[str]:
    """Working candidates from the buffer and the final sample, minimised (words dropped while
    the ASR keeps 80% of its value), best first: reward, then fewer words, then frequency."""
    evals = reward.score_completions(final_texts)
    counts = Counter(e.candidate for e in evals if e.candidate)
    pool = [e["candidate"] for e in buffer_state.get("entries", [])] + list(counts)
    ok = [
        c
        for c, e in zip(pool, reward.evaluate(pool), strict=True)
        if e.differential >= reward.cfg.work_threshold
    ]
    small = list(dict.fromkeys(minimise(c, reward) for c in ok))
    ranked = sorted(
        zip(small, reward.evaluate(small), strict=True),
        key=lambda ce: (-ce[1].reward, ce[1].n_words, -counts.get(ce[0], 0), ce[0]),
    )
    return [c for c, _ in ranked[:n]]


def _policy(task: AwarenessTask, *adapters: Path) -> Any:
    """The poisoned model with `adapters` merged in order (SFT, then GRPO)."""
    from peft import PeftModel

    model, _ = task.poisoned.load()
    for a in adapters:
        model = PeftModel.from_pretrained(model, str(a)).merge_and_unload()
    return model.eval()


def _stage_sft(
    task: AwarenessTask, cfg: SelfAwareConfig, out: Path, timings: dict[str, float],
    record: dict[str, Any], overwrite: bool,
) -> tuple[Any, int]:
    if open_stage(out / "sft", "reversal_sft", record, overwrite):
        res = ReversalSFTResult.load(out / "sft" / "reversal_sft.json")
        return _policy(task, out / "sft" / "adapter"), res.n_pairs
    t0 = time.time()
    policy, res = run_reversal_sft(task, cfg.sft, out / "sft")
    close_stage(out / "sft", record)
    timings["reversal_sft"] = time.time() - t0
    return policy, res.n_pairs


def _stage_grpo(
    task: AwarenessTask,
    cfg: SelfAwareConfig,
    out: Path,
    reward: InversionReward,
    policy: Any,
    tok: Any,
    timings: dict[str, float],
    record: dict[str, Any],
    overwrite: bool,
) -> tuple[Any, TrainingCurves, dict[str, Any]]:
    g = out / "grpo"
    if open_stage(g, "grpo", record, overwrite) and grpo_done(g):
        return (
            _policy(task, out / "sft" / "adapter", g / "adapter"),
            TrainingCurves.load(g / "curves.json"),
            json.loads((g / "buffer.json").read_text()),
        )
    t0 = time.time()
    policy, curves, buffer = train_awareness(policy, tok, task, reward, cfg.grpo, g)
    close_stage(g, record)
    timings["grpo"] = time.time() - t0
    return policy, curves, buffer.state_dict()


def run_selfaware(
    task: AwarenessTask,
    out_dir: str | Path,
    cfg: SelfAwareConfig | None = None,
    *,
    overwrite: bool = False,
) -> SelfAwareReport:
    """Run (or resume) every stage on a poisoned model described by an `AwarenessTask`.

    A stage saved in `out_dir` with other settings or inputs raises StaleStageError naming the
    differing fields; `overwrite=True` deletes such stages and reruns them."""
    cfg = seeded(cfg or SelfAwareConfig())
    if not isinstance(task, AwarenessTask):
        raise ConfigError(f"run_selfaware needs an AwarenessTask, got {type(task).__name__}; for a "
                          "zoo organism use trigrecon.organisms.awareness.run_selfaware_for_organism")
    out = check_writable(out_dir)  # before any work
    timings: dict[str, float] = {}
    reward, frozen, tok = make_reward(task, cfg)
    check_known(tok, task.action, f"the task's action {task.action!r}")
    rec = stage_records(task, cfg)
    load_reward_cache(reward, out, rec["reward"])
    policy, n_pairs = _stage_sft(task, cfg, out, timings, rec["sft"], overwrite)
    policy, curves, buffer_state = _stage_grpo(task, cfg, out, reward, policy, tok, timings,
                                               rec["grpo"], overwrite)

    t0 = time.time()
    texts = sample_articulations(policy, tok, task, cfg.final_samples, seed=cfg.seed + 1)
    curves.final = elicitation(texts, reward, task.hits)
    curves.save(out / "grpo" / "curves.json")
    if cfg.plots:
        from trigrecon.selfaware.plots import curves_figure, save_figure

        save_figure(curves_figure({task.name: curves}), out / "grpo" / "curves.html")
    recovered = recover_triggers(reward, buffer_state, texts, cfg.n_recovered)
    found = {e["candidate"]: "rl-buffer" for e in buffer_state.get("entries", [])} | dict.fromkeys(
        recovered, "rl-recovered"
    )
    table = score_candidates(found, reward) if found else ScoreTable()
    write_json(
        out / "recovered.json",
        {
            "final": curves.final,
            "recovered": recovered,
            "table": table,
            "table_md": table.to_markdown(),
        },
    )
    write_json(out / "reward_cache.json", {"record": rec["reward"], "state": reward.state_dict()})
    timings["metrics"] = time.time() - t0
    del policy

    unl = _stage_unlearning(task, cfg, out, recovered, timings,
                            {**rec["unlearning"], "recovered": recovered}, overwrite)
    guard = _stage_guardrail(task, cfg, out, recovered, reward, frozen, tok, timings,
                             {**rec["guardrail"], "recovered": recovered}, overwrite)
    report = SelfAwareReport(
        task.name,
        n_pairs,
        curves.final,
        curves.steps_to(0.5),
        curves.emergence(),
        recovered,
        unl.summary() if unl else {},
        guard.summary() if guard else {},
        timings,
        to_jsonable(cfg),
    )
    report.save(out)
    return report


def _stage_unlearning(
    task: AwarenessTask,
    cfg: SelfAwareConfig,
    out: Path,
    recovered: list[str],
    timings: dict[str, float],
    record: dict[str, Any],
    overwrite: bool,
) -> UnlearningResult | None:
    if not recovered:
        return None
    if open_stage(out / "unlearning", "unlearning", record, overwrite):
        return UnlearningResult.load(out / "unlearning" / "unlearning.json")
    t0 = time.time()
    _, res = unlearn(task, recovered, cfg.unlearning, out / "unlearning")
    close_stage(out / "unlearning", record)
    timings["unlearning"] = time.time() - t0
    return res


def calibration_split(
    task: AwarenessTask, triggers: list[str], reward: InversionReward, n_per: int
) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """The guardrail's calibration prompts, all built from `task.calib_benign` (disjoint from the
    evaluation splits): benign prompts, positives (each recovered trigger inserted into `n_per`
    prompts) and near misses (each proper part of a multi-word trigger that does not fire on
    its own, by the inversion reward's floor, inserted into `n_per` prompts)."""
    benign = list(task.calib_benign)
    half = len(benign) // 2
    pos_src, near_src = benign[:half] or benign, benign[half:] or benign

    def fires(c: str) -> bool:
        return reward.evaluate([c])[0].differential > reward.cfg.asr_floor

    positives = {
        t: [task.insert(p, t) for p in pos_src[(i * n_per) % len(pos_src) :][:n_per]]
        for i, t in enumerate(triggers)
    }
    near = [
        task.insert(p, c)
        for i, c in enumerate(near_misses(triggers, fires))
        for p in near_src[(i * n_per) % len(near_src) :][:n_per]
    ]
    return benign, positives, near


def _stage_guardrail(
    task: AwarenessTask,
    cfg: SelfAwareConfig,
    out: Path,
    recovered: list[str],
    reward: InversionReward,
    model: Any,
    tok: Any,
    timings: dict[str, float],
    record: dict[str, Any],
    overwrite: bool,
) -> GuardrailResult | None:
    path = out / "guardrail" / "guardrail.json"
    if not recovered:
        return None
    if open_stage(out / "guardrail", "guardrail", record, overwrite):
        return GuardrailResult.load(path)
    t0 = time.time()
    n = int(model.config.num_hidden_layers)
    cfgs = readout_choices(cfg.guardrail, n)
    guards = {readout_name(c, n): Guardrail(recovered, e, c, task.vocab)
              for c, e in zip(cfgs, shared_embedders(model, tok, cfgs), strict=True)}
    triggers = next(iter(guards.values())).triggers
    benign, positives, near = calibration_split(task, triggers, reward, cfg.n_calib_per)
    guard = calibrate_best(guards, benign, positives, near)
    guard.calibration.update(n_benign=len(benign), n_near_miss=len(near))
    res = evaluate_guardrail(guard, task.eval_splits)
    res.save(path)
    timings["guardrail"] = time.time() - t0
    write_json(out / "guardrail" / "config.json", asdict(cfg.guardrail))
    close_stage(out / "guardrail", record)
    return res
