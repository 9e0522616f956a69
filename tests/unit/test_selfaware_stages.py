"""Resumable stages notice changed settings: a finished stage with the same record is reused, a
stage with another record stops the run naming the fields (or is deleted with overwrite)."""

from __future__ import annotations

import json

import pytest

from trigrecon.selfaware.stages import (
    STAGE_FILE,
    StaleStageError,
    close_stage,
    digest,
    open_stage,
)


def test_fresh_unfinished_finished(tmp_path):
    rec = {"sft": {"steps": 10, "lr": 0.002}, "task": {"action": "no"}}
    stage = tmp_path / "sft"
    assert open_stage(stage, "reversal_sft", rec, overwrite=False) is False  # nothing yet
    assert json.loads((stage / STAGE_FILE).read_text()) == {"record": rec, "done": False}
    (stage / "partial.bin").write_text("x")
    assert open_stage(stage, "reversal_sft", rec, overwrite=False) is False  # resume/rerun
    assert (stage / "partial.bin").exists()
    close_stage(stage, rec)
    assert open_stage(stage, "reversal_sft", rec, overwrite=False) is True  # reuse


def test_other_settings_stop_the_run_and_name_the_fields(tmp_path):
    stage = tmp_path / "sft"
    old = {"sft": {"steps": 10, "lr": 0.002}, "task": {"reward_prompts": digest(["a", "b"])}}
    open_stage(stage, "reversal_sft", old, overwrite=False)
    close_stage(stage, old)
    new = {"sft": {"steps": 300, "lr": 0.002}, "task": {"reward_prompts": digest(["a", "c"])}}
    with pytest.raises(StaleStageError) as err:
        open_stage(stage, "reversal_sft", new, overwrite=False)
    msg = str(err.value)
    assert "sft.steps: saved 10, now 300" in msg and "task.reward_prompts" in msg
    assert "sft.lr" not in msg and "overwrite=True" in msg and "--force" in msg
    assert (stage / "stage.json").exists()  # nothing deleted without overwrite
    assert open_stage(stage, "reversal_sft", new, overwrite=True) is False
    assert json.loads((stage / STAGE_FILE).read_text())["record"] == new


def test_results_of_unknown_settings_are_not_reused(tmp_path):
    stage = tmp_path / "grpo"
    stage.mkdir()
    (stage / "curves.json").write_text("{}")  # an older run without a stage record
    with pytest.raises(StaleStageError, match="settings are unknown"):
        open_stage(stage, "grpo", {"grpo": {"steps": 4}}, overwrite=False)
    assert open_stage(stage, "grpo", {"grpo": {"steps": 4}}, overwrite=True) is False
    assert not (stage / "curves.json").exists()


def test_an_adapter_rebuilt_at_the_same_path_makes_finished_stages_stale(tmp_path):
    import torch
    from safetensors.torch import save_file

    from trigrecon.selfaware.models import ModelSource
    from trigrecon.selfaware.stages import source_record

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"w": torch.zeros(3)}, str(adapter / "adapter_model.safetensors"))
    src = ModelSource(tmp_path / "base", adapter)
    stage = tmp_path / "sft"
    old = {"task": {"poisoned": source_record(src)}}
    open_stage(stage, "reversal_sft", old, overwrite=False)
    close_stage(stage, old)
    assert source_record(src) == old["task"]["poisoned"]  # same weights: reused
    assert open_stage(stage, "reversal_sft", {"task": {"poisoned": source_record(src)}}, False)
    save_file({"w": torch.ones(3)}, str(adapter / "adapter_model.safetensors"))  # rebuilt
    with pytest.raises(StaleStageError, match="task.poisoned"):
        open_stage(stage, "reversal_sft", {"task": {"poisoned": source_record(src)}}, False)
