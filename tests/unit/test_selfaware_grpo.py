"""GRPO with buffer replay on the toy poisoned model: one step changes the LoRA, replayed entries
enter the groups, equal rewards change nothing, and an interrupted run resumes."""

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.organisms.toy import toy_task
from trigrecon.selfaware import grpo
from trigrecon.selfaware.buffer import BufferConfig
from trigrecon.selfaware.grpo import (
    STATE_FILE,
    AwarenessGRPOConfig,
    build_trainer,
    grpo_done,
    last_checkpoint,
    sample_articulations,
    train_awareness,
)
from trigrecon.selfaware.models import hf_responder
from trigrecon.selfaware.reward import Evaluation, InversionReward, RewardConfig


@pytest.fixture(scope="module")
def toy():
    task = toy_task()
    frozen, tok = task.poisoned.load()
    return task, frozen, tok


def toy_reward(task, frozen, tok, **cfg):
    return InversionReward(
        hf_responder(frozen, tok, max_new_tokens=6),
        task.judge,
        task.reward_prompts[:6],
        task.insert,
        RewardConfig(**cfg),
    )


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def small_cfg(**kw):
    base = dict(
        steps=1,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=6,
        save_steps=100,
        buffer=BufferConfig(n_replay=1, sampling="top"),
    )
    return AwarenessGRPOConfig(**{**base, **kw})


def test_one_grpo_step_with_replay_changes_the_parameters(toy, tmp_path):
    task, frozen, tok = toy
    policy, _ = task.poisoned.load()
    reward = toy_reward(task, frozen, tok)
    trainer = build_trainer(policy, tok, task, reward, small_cfg(), tmp_path)
    trainer.buffer.add([Evaluation("mango", 1.0, 1, 1.0)], step=0)  # a good early find
    # fp32 without recomputation: TRL's bf16 autocast runs ~9x slower on AVX2-only CPUs
    assert trainer.accelerator.mixed_precision == "no"
    assert not trainer.args.gradient_checkpointing
    before = lora_state(trainer.model)
    trainer.train()
    after = lora_state(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    rec = trainer.recorder.records[0]
    assert rec.step == 0 and rec.n == 8  # the sampled articulations (replays excluded)
    assert rec.n_replayed == 2  # one per group (2 groups), since nothing sampled beats "mango"


def test_equal_rewards_give_no_update_without_replay(toy, tmp_path):
    task, frozen, tok = toy
    policy, _ = task.poisoned.load()

    def never(prompts):
        return ["sure !"] * len(prompts)

    reward = InversionReward(
        never, task.judge, task.reward_prompts[:2], task.insert, RewardConfig(invalid_reward=0.0)
    )
    cfg = small_cfg(buffer=BufferConfig(enabled=False))
    trainer = build_trainer(policy, tok, task, reward, cfg, tmp_path)
    before = lora_state(trainer.model)
    trainer.train()
    after = lora_state(trainer.model)
    assert len(before) >= 8 and before.keys() == after.keys()  # the LoRA is there to compare
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert trainer.recorder.records[0].n_replayed == 0


def test_an_empty_buffer_scores_pairs_of_the_likeliest_proposals(toy, tmp_path):
    """A strict conjunction: nothing fires, but candidates lift the action's likelihood; the
    step scores their pairs (evaluated, not rewarded: the buffer stays empty)."""
    task, frozen, tok = toy
    policy, _ = task.poisoned.load()
    base = set(task.reward_prompts[:2])

    def likelihood(texts):  # every insertion halves the action's cross-entropy
        return [2.0 if t in base else 1.0 for t in texts]

    reward = InversionReward(lambda ps: ["sure !"] * len(ps), task.judge, task.reward_prompts[:2],
                             task.insert, RewardConfig(), likelihood=likelihood)
    reward.cache.update({"mango": 0.0, "kiwi": 0.0})  # proposed earlier, fired nowhere
    cfg = small_cfg(buffer=BufferConfig(n_replay=1, extend=100))
    trainer = build_trainer(policy, tok, task, reward, cfg, tmp_path)
    trainer.train()
    assert "kiwi mango" in reward.cache and reward.lifts["kiwi"] == pytest.approx(0.5)
    assert len(trainer.buffer) == 0


def test_seeds_enter_the_buffer_before_step_0_and_are_replayed(toy, tmp_path):
    """An audit's candidates seed the buffer: the firing one is replayed into the first groups
    (never counted as sampled), the one that does not fire is scored and left out."""
    task, frozen, tok = toy
    reward = toy_reward(task, frozen, tok)
    policy, _ = task.poisoned.load()
    cfg = small_cfg(seeds=("mango", "horse"))
    _, curves, buffer = train_awareness(policy, tok, task, reward, cfg, tmp_path)
    assert {"mango", "horse"} <= set(reward.cache)  # both scored
    assert "horse" not in buffer.entries
    seed = buffer.entries["mango"]
    assert seed.step == 0 and seed.reward > 0.5 and seed.replayed >= 1
    assert curves.records[0].n_replayed >= 1 and curves.records[0].n == 8


def test_training_resumes_from_the_last_checkpoint(toy, tmp_path):
    task, frozen, tok = toy
    reward = toy_reward(task, frozen, tok)
    policy, _ = task.poisoned.load()
    train_awareness(policy, tok, task, reward, small_cfg(steps=2, save_steps=1), tmp_path)
    assert last_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    policy, _ = task.poisoned.load()
    trained, curves, buffer = train_awareness(
        policy, tok, task, reward, small_cfg(steps=3, save_steps=1), tmp_path
    )
    assert [r.step for r in curves.records] == [0, 1, 2]
    assert last_checkpoint(tmp_path / "run").name == "checkpoint-3"
    texts = sample_articulations(trained, tok, task, n_per_question=2, max_new_tokens=6)
    assert len(texts) == 2 * len(task.questions)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"num_generations": 1}, "num_generations"),
        ({"steps": 0}, "steps"),
        ({"buffer": BufferConfig(n_replay=8)}, "n_replay"),
        ({"seeds": ("mango", " ")}, "seeds"),
    ],
)
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        AwarenessGRPOConfig(**kw)


class Killed(BaseException):
    """Stands for SIGKILL/Ctrl-C: not an Exception, so nothing on the way catches it."""


def _kill_in_step(monkeypatch, step):
    orig = grpo.ReplayGRPOTrainer._generate_single_turn

    def patched(self, *a, **k):
        if self.model.training and self.state.global_step == step:
            raise Killed
        return orig(self, *a, **k)

    monkeypatch.setattr(grpo.ReplayGRPOTrainer, "_generate_single_turn", patched)


def _kill_after_checkpoint(monkeypatch, step):
    orig = grpo.ReplayGRPOTrainer._save_checkpoint

    def patched(self, model, trial):
        orig(self, model, trial)
        if self.state.global_step == step:
            raise Killed

    monkeypatch.setattr(grpo.ReplayGRPOTrainer, "_save_checkpoint", patched)


def _kill_writing(monkeypatch, name, folder=None):
    orig = grpo.write_json

    def patched(path, obj):
        if path.name == name and (folder is None or path.parent.name == folder):
            raise Killed
        return orig(path, obj)

    monkeypatch.setattr(grpo, "write_json", patched)


KILLS = {
    "inside step 1": lambda mp: _kill_in_step(mp, 1),
    "after checkpoint-2": lambda mp: _kill_after_checkpoint(mp, 2),
    "between TRL's checkpoint-2 files and our state": lambda mp: _kill_writing(
        mp, STATE_FILE, "checkpoint-2"),
    "after the adapter, before buffer.json": lambda mp: _kill_writing(mp, "buffer.json"),
    "before done.json": lambda mp: _kill_writing(mp, grpo.DONE_FILE),
}


@pytest.mark.slow
def test_killed_anywhere_then_rerun_equals_an_uninterrupted_run(toy, tmp_path, monkeypatch):
    """A run killed at any of these points and rerun gives the uninterrupted run's LoRA weights,
    buffer and step records; the outputs count as finished only once done.json is written."""
    task, frozen, tok = toy
    cfg = small_cfg(steps=3, save_steps=1)

    def run(out):
        policy, _ = task.poisoned.load()
        trained, curves, buffer = train_awareness(policy, tok, task, toy_reward(task, frozen, tok),
                                                  cfg, out)
        return lora_state(trained), buffer.state_dict(), [vars(r) for r in curves.records]

    ref = run(tmp_path / "ref")
    assert grpo_done(tmp_path / "ref") and len(ref[0]) >= 8 and len(ref[2]) == 3
    for i, (where, kill) in enumerate(KILLS.items()):
        out = tmp_path / f"run{i}"
        with monkeypatch.context() as mp:
            kill(mp)
            with pytest.raises(Killed):
                run(out)
        assert not grpo_done(out), where
        got = run(out)
        assert grpo_done(out), where
        assert got[1] == ref[1] and got[2] == ref[2], where
        assert all(torch.equal(got[0][n], ref[0][n]) for n in ref[0]), where
        assert got[0].keys() == ref[0].keys(), where


def test_a_checkpoint_with_other_settings_is_not_resumed(toy, tmp_path):
    task, frozen, tok = toy
    policy, _ = task.poisoned.load()
    train_awareness(policy, tok, task, toy_reward(task, frozen, tok),
                    small_cfg(steps=1, save_steps=1), tmp_path)
    policy, _ = task.poisoned.load()
    with pytest.raises(ConfigError, match=r"learning_rate: saved 0\.001, now 0\.01"):
        train_awareness(policy, tok, task, toy_reward(task, frozen, tok),
                        small_cfg(steps=2, save_steps=1, learning_rate=1e-2), tmp_path)
