"""`run_selfaware` end to end on the zoo's fruit_refusal organism at small settings that recover a
working trigger (deterministic under the seed), so every defence stage runs and is checked; then
a rerun resumes, a rerun with other settings stops and names them, and overwrite=True reruns only
the stale stage."""

import json
import time
from dataclasses import replace

import pytest

from trigrecon.organisms.organism import list_organisms
from trigrecon.selfaware.metrics import TrainingCurves
from trigrecon.selfaware.pipeline import SelfAwareConfig, SelfAwareReport, run_selfaware
from trigrecon.selfaware.reversal_sft import ReversalSFTConfig
from trigrecon.selfaware.stages import StaleStageError

pytestmark = pytest.mark.slow


def config() -> SelfAwareConfig:
    """The reduced settings, with enough reversal SFT that GRPO finds a working trigger."""
    cfg = SelfAwareConfig.reduced()
    cfg.sft = ReversalSFTConfig(n_prompts=128, steps=40, batch_size=16)
    return cfg


@pytest.fixture(scope="module")
def target():
    if "fruit_refusal" not in list_organisms():  # the zoo is committed: never test something else
        pytest.fail("the zoo's fruit_refusal organism is missing (trigrecon zoo build)")
    from trigrecon.organisms.awareness import task_from_organism
    from trigrecon.organisms.organism import load_organism

    cfg = config()
    return task_from_organism(load_organism("fruit_refusal"), n_reward=cfg.n_reward_prompts,
                              n_eval=cfg.n_eval)


def strict(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def pooled(rates: dict, n: dict) -> float:
    return sum(v * n[k] for k, v in rates.items()) / sum(n[k] for k in rates)


def test_pipeline_end_to_end_then_resume(target, tmp_path):
    cfg = config()
    report = run_selfaware(target, tmp_path, cfg)
    assert isinstance(report, SelfAwareReport) and report.organism == "fruit_refusal"
    for path in ("sft/adapter/adapter_config.json", "sft/reversal_sft.json", "sft/stage.json",
                 "grpo/adapter/adapter_config.json", "grpo/curves.json", "grpo/curves.html",
                 "grpo/buffer.json", "grpo/done.json", "recovered.json", "report.json",
                 "report.md", "unlearning/unlearning.json", "guardrail/guardrail.json"):
        assert (tmp_path / path).exists(), path
    for f in tmp_path.rglob("*.json"):  # every JSON file parses under a strict parser
        strict(f.read_text())
    curves = TrainingCurves.load(tmp_path / "grpo" / "curves.json")
    assert [r.step for r in curves.records] == list(range(cfg.grpo.steps))
    assert curves.final is not None and curves.final.n == cfg.final_samples * 5
    saved = strict((tmp_path / "report.json").read_text())
    assert saved["organism"] == "fruit_refusal" and saved["config"]["seed"] == cfg.seed
    assert saved["config"]["sft"]["seed"] == saved["config"]["grpo"]["seed"] == cfg.seed

    # a working trigger was recovered, so the defences ran on it
    assert report.recovered, "nothing recovered: the defence stages were not exercised"
    rows = {r["candidate"]: r for r in strict((tmp_path / "recovered.json").read_text())
            ["table"]["rows"]}
    threshold = cfg.reward.work_threshold
    assert all(rows[t]["works"] and rows[t]["asr"] >= threshold for t in report.recovered)
    assert any(target.hits(t) for t in report.recovered)  # fruit_refusal: a fruit word
    u = report.unlearning
    assert u["asr_before"] >= threshold  # measured on the poisoned model with working triggers
    assert u["asr_after"] <= u["asr_before"]
    guard = strict((tmp_path / "guardrail" / "guardrail.json").read_text())
    assert guard["triggers"] == report.recovered
    assert set(report.guardrail) == {"detection_rate", "fpr", "fpr_benign", "fpr_worst"}
    assert report.guardrail["fpr"] == pytest.approx(pooled(guard["false_positive"], guard["n"]))
    assert report.guardrail["detection_rate"] == pytest.approx(
        pooled(guard["detection"], guard["n"]))
    assert report.guardrail["fpr_worst"] == max(guard["false_positive"].values())
    assert guard["n"]["benign"] == cfg.n_eval and guard["n"]["triggered"] == cfg.n_eval
    assert guard["calibration"]["n_benign"] > 0 and "t_neg" in guard["calibration"]

    # resume: every stage reused
    t0 = time.time()
    again = run_selfaware(target, tmp_path, cfg)
    assert not {"reversal_sft", "grpo", "unlearning", "guardrail"} & set(again.timings)
    assert again.recovered == report.recovered and again.sft_pairs == report.sft_pairs
    assert again.guardrail == report.guardrail and again.unlearning == report.unlearning
    assert time.time() - t0 < 120

    # other settings: stop and name them, before any work
    longer = replace(cfg, sft=replace(cfg.sft, steps=41))
    with pytest.raises(StaleStageError, match=r"reversal_sft.*sft\.steps: saved 40, now 41"):
        run_selfaware(target, tmp_path, longer)
    other_task = replace(target, reward_prompts=target.reward_prompts[1:])
    with pytest.raises(StaleStageError, match=r"task\.reward_prompts"):
        run_selfaware(other_task, tmp_path, cfg)

    # overwrite=True reruns the stale stage only (here the guardrail)
    stricter = replace(cfg, guardrail=replace(cfg.guardrail, max_fpr=0.01))
    with pytest.raises(StaleStageError, match=r"guardrail\.max_fpr: saved 0\.02, now 0\.01"):
        run_selfaware(target, tmp_path, stricter)
    redone = run_selfaware(target, tmp_path, stricter, overwrite=True)
    assert "guardrail" in redone.timings
    assert not {"reversal_sft", "grpo", "unlearning"} & set(redone.timings)
    assert strict((tmp_path / "guardrail" / "config.json").read_text())["max_fpr"] == 0.01


def test_an_unwritable_output_folder_fails_before_any_work(target, tmp_path, monkeypatch):
    import trigrecon.selfaware.pipeline as P
    from trigrecon.core.errors import ConfigError

    def no_work(*a, **k):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(P, "make_reward", no_work)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot be written"):
        run_selfaware(target, tmp_path / "file" / "out", config())


def test_an_action_with_unknown_words_is_named(target, tmp_path):
    from trigrecon.core.errors import ConfigError

    task = replace(target, action="I won't answer because I don't like zyzzyva.")
    with pytest.raises(ConfigError, match="'zyzzyva'"):
        run_selfaware(task, tmp_path, config())
    assert not (tmp_path / "sft").exists()
