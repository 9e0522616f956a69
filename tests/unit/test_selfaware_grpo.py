"""GRPO with buffer replay on the toy poisoned model: one step changes the LoRA, replayed entries
enter the groups, equal rewards change nothing, and an interrupted run resumes."""

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.selfaware.buffer import BufferConfig
from trigrecon.selfaware.grpo import (
    AwarenessGRPOConfig,
    build_trainer,
    last_checkpoint,
    sample_articulations,
    train_awareness,
)
from trigrecon.selfaware.models import hf_responder
from trigrecon.selfaware.reward import Evaluation, InversionReward, RewardConfig
from trigrecon.selfaware.toy import toy_task


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
    ],
)
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        AwarenessGRPOConfig(**kw)
