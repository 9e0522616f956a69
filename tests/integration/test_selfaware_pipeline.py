"""`run_selfaware` end to end at reduced steps: on the zoo's fruit_refusal organism when it has
been built, else on the toy poisoned model; then a rerun resumes from the saved stages."""

import json
import time

import pytest

from trigrecon.organisms.organism import list_organisms
from trigrecon.selfaware.metrics import TrainingCurves
from trigrecon.selfaware.pipeline import SelfAwareConfig, SelfAwareReport, run_selfaware

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target():
    if "fruit_refusal" in list_organisms():
        return {"organism": "fruit_refusal", "task": None}
    from trigrecon.selfaware.toy import toy_task

    return {"organism": None, "task": toy_task()}


def test_pipeline_end_to_end_then_resume(target, tmp_path):
    cfg = SelfAwareConfig.reduced()
    report = run_selfaware(target["organism"], tmp_path, cfg, task=target["task"])
    assert isinstance(report, SelfAwareReport)
    for path in (
        "sft/adapter/adapter_config.json",
        "sft/reversal_sft.json",
        "grpo/adapter/adapter_config.json",
        "grpo/curves.json",
        "grpo/curves.html",
        "grpo/buffer.json",
        "recovered.json",
        "report.json",
        "report.md",
    ):
        assert (tmp_path / path).exists(), path
    curves = TrainingCurves.load(tmp_path / "grpo" / "curves.json")
    assert [r.step for r in curves.records] == list(range(cfg.grpo.steps))
    assert curves.final is not None and curves.final.n == cfg.final_samples * 5
    assert json.loads((tmp_path / "report.json").read_text())["organism"] == report.organism
    if report.recovered:  # defences only run once a working trigger was recovered
        assert (tmp_path / "unlearning" / "unlearning.json").exists()
        assert (tmp_path / "guardrail" / "guardrail.json").exists()
        assert 0.0 <= report.guardrail["fpr"] <= 1.0
        assert set(report.guardrail) == {"detection_rate", "fpr", "fpr_benign", "fpr_worst"}
        guard = json.loads((tmp_path / "guardrail" / "guardrail.json").read_text())
        assert guard["calibration"]["n_benign"] > 0 and "t_neg" in guard["calibration"]

    t0 = time.time()
    again = run_selfaware(target["organism"], tmp_path, cfg, task=target["task"])
    assert "reversal_sft" not in again.timings and "grpo" not in again.timings  # resumed
    assert again.recovered == report.recovered and again.sft_pairs == report.sft_pairs
    assert time.time() - t0 < 120
