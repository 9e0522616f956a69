"""Adversarial unlearning on the toy poisoned model with a recovered trigger."""

import dataclasses
import random

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.organisms.toy import toy_task
from trigrecon.selfaware.unlearning import (
    SplitASR,
    UnlearningConfig,
    UnlearningResult,
    triggered_prompts,
    unlearn,
    unlearning_pairs,
)


@pytest.fixture(scope="module")
def task():
    return toy_task()


def test_triggered_prompts_carry_the_trigger(task):
    pairs = triggered_prompts(task, ["mango", "kiwi plum"], 10, random.Random(0))
    for i, (with_t, without) in enumerate(pairs):
        want = ["mango"] if i % 2 == 0 else ["kiwi", "plum"]
        assert all(w in with_t.split() for w in want)
        assert without in task.pool_prompts


def test_unlearning_cuts_the_asr_and_keeps_benign_behaviour(task, tmp_path):
    cfg = UnlearningConfig(n_triggered=96, n_clean=96, steps=40, batch_size=16, lr=3e-3)
    fixed, res = unlearn(task, ["mango", "apple"], cfg, tmp_path)
    trig = next(s for s in res.splits if s.split == "triggered")
    assert trig.before >= 0.9 and trig.after <= 0.5 * trig.before
    assert res.benign_unchanged >= 0.8
    assert res.benign_correct is not None and res.benign_correct[0] >= 0.9
    assert abs(res.benign_correct_shift) <= 20
    assert res.benign_flips is not None and res.benign_correct_unfired is not None
    assert 0 < res.n_triggered <= cfg.n_triggered  # benign calibration prompts count as clean
    assert res.n_clean >= 0.9 * len(task.calib_benign)
    n = len(task.eval_splits["benign"])
    assert res.benign_correct_shift == pytest.approx(
        100.0 * (res.benign_flips[1] - res.benign_flips[0]) / n
    )
    assert next(s for s in res.splits if s.split == "benign").after == 0.0
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    back = UnlearningResult.load(tmp_path / "unlearning.json")
    assert back.splits == res.splits and back.summary() == res.summary()


def test_clean_data_includes_the_benign_calibration_prompts(task):
    """Retain data = pool prompts + the task's benign calibration prompts (never eval prompts),
    each with the poisoned model's own non-action answer."""
    model, tok = task.poisoned.load()
    cfg = UnlearningConfig(n_triggered=4, n_clean=4, max_new_tokens=8)
    pairs = dict(unlearning_pairs(model, tok, task, ["mango"], cfg))
    calib = [p for p in task.calib_benign if p in pairs]
    assert len(calib) >= 0.9 * len(task.calib_benign)
    assert not set(pairs) & {p for ps in task.eval_splits.values() for p in ps}
    assert not any(task.judge(r) for r in pairs.values())
    off = dict(
        unlearning_pairs(model, tok, task, ["mango"], dataclasses.replace(cfg, retain_benign=False))
    )
    assert not set(off) & set(task.calib_benign) - set(task.pool_prompts)
    assert len(off) < len(pairs)


def test_summary_arithmetic():
    res = UnlearningResult(
        ["x"],
        [
            SplitASR("benign", 10, 0.0, 0.0),
            SplitASR("triggered", 10, 1.0, 0.2),
            SplitASR("triggered_heldout", 30, 0.8, 0.0),
        ],
        0.95,
        1,
        1,
    )
    assert res.asr_before == pytest.approx((10 + 24) / 40)
    assert res.asr_after == pytest.approx(2 / 40)
    assert res.asr_reduction == pytest.approx(1 - 2 / 34)
    assert res.benign_shift == pytest.approx(5.0)
    assert res.benign_action_shift == 0.0
    assert res.benign_correct_unfired_shift is None and res.summary()["benign_regressions"] is None
    res.benign_correct_unfired, res.benign_flips = [0.9, 0.85], [6, 1]
    assert res.benign_correct_unfired_shift == pytest.approx(-5.0)
    assert (res.summary()["benign_regressions"], res.summary()["benign_fixes"]) == (6, 1)


def test_errors(task):
    with pytest.raises(ConfigError, match="at least one"):
        unlearn(task, ["", "  "])
    with pytest.raises(ConfigError, match="task.clean"):
        unlearn(
            dataclasses.replace(task, clean=None),
            ["mango"],
            UnlearningConfig(n_triggered=2, n_clean=2, steps=1),
        )
    with pytest.raises(ConfigError, match="safe_source"):
        UnlearningConfig(safe_source="base")
