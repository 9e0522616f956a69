"""HTML reports from saved run folders (no model): self-contained, headline first, every figure
present; the self-awareness report also renders in headless chromium without a JS error."""

import json
import math

import browser  # tests/browser.py
import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.core.io import save_tensors, write_json
from trigrecon.report import write_report
from trigrecon.selfaware.metrics import StepRecord, TrainingCurves

HIT = {"latent": 7, "score": -0.5, "label": "fruit: mango, pear <b>"}


def audit_folder(d):
    ver = {"baseline_rate": 0.0, "control_rate": 0.125, "control_words": ["plum"], "latents": [],
           "latent_words": {"7": ["mango"]},
           "candidates": [{"words": ["mango"], "latents": [7], "action_rate": 1.0}]}
    steps = [{"iteration": 0, "chosen": HIT, "words": ["mango"], "loss": 0.5,
              "action_rate": 0.9, "ranking": [HIT], "source": "sweep"}]
    write_json(d / "audit.json", {
        "model": "m", "response": "no fruit", "n_prompts": 4, "n_eval_prompts": 8,
        "methods": ["sae_attribution", "supervised_sae_melbo", "conjunctive", "verify"],
        "rankings": {"sae_attribution": [HIT], "supervised_sae_melbo": [HIT]},
        "timings": {"verify": 1.0}, "verification": ver,
        "conjunctive": {"steps": steps, "explained": True},
        "steering": {"supervised_sae_melbo": {"order": [1, 0], "readouts": [
            {"index": 0, "action_rate": 0.25}, {"index": 1, "action_rate": 0.75}]}},
        "candidate_scores": {"interp_name": "SAE", "rows": [
            {"candidate": "mango", "source": "verify", "asr": 1.0, "n_words": 1, "reward": 1.0,
             "works": True, "interp": 0.5, "extra": {"directions L1": 0.9}}]}})
    import torch

    save_tensors(d / "supervised_sae_melbo" / "steering.safetensors",
                 {"history": torch.linspace(2, 1, 20).repeat(2, 1).T})
    return d


def test_audit_report_is_self_contained_with_headline_and_figures(tmp_path):
    path = write_report(audit_folder(tmp_path))
    html = path.read_text()
    assert path.name == "report.html" and "<script src=" not in html  # nothing fetched: offline
    assert html.index('id="headline"') < html.index("Plotly.newPlot")
    assert "Best trigger hypothesis: mango" in html and "confidence: high" in html
    for title in ("Latent ranking: sae_attribution", "Loss curves: supervised_sae_melbo",
                  "Conjunctive search", "Verification: candidates against baseline and control",
                  "Candidate scoring"):
        assert title in html, title
    assert "&lt;b&gt;" in html  # labels are escaped text
    assert html.count("class=\"plotly-graph-div\" style") == 5  # 2 rankings, loss curves, conjunctive, candidates
    assert html.count("* plotly.js v") == 1  # plotly.js inlined once, not per figure


def selfaware_folder(d):
    recs = [StepRecord(step=i, n=8, valid_rate=1.0, hit_rate=min(1.0, i / 10), work_rate=i / 12,
                       mean_reward=math.tanh(i / 5), max_reward=1.0) for i in range(12)]
    TrainingCurves(recs).save(d / "grpo" / "curves.json")
    TrainingCurves([StepRecord(**dict(vars(r), hit_rate=0.0)) for r in recs]).save(
        d / "grpo_no_replay" / "curves.json")
    write_json(d / "unlearning" / "unlearning.json", {"splits": [
        {"split": "triggered", "n": 10, "before": 1.0, "after": 0.0},
        {"split": "benign", "n": 10, "before": 0.0, "after": 0.0}]})
    write_json(d / "guardrail" / "guardrail.json", {
        "detection": {"triggered": 1.0}, "false_positive": {"benign": 0.02}, "threshold": 0.5,
        "detection_rate": 1.0, "fpr": 0.02})
    write_json(d / "report.json", {
        "organism": "fruit_refusal", "recovered": ["mango", "pear"],
        "final": {"n": 8, "hit_rate": 1.0, "work_rate": 0.9}, "steps_to_50": 5,
        "unlearning": {"asr_before": 1.0, "asr_after": 0.0},
        "guardrail": {"detection_rate": 1.0, "fpr": 0.02}, "timings": {"grpo": 3.0}})
    return d


def test_selfaware_report(tmp_path):
    html = write_report(selfaware_folder(tmp_path)).read_text()
    assert "Recovered trigger: \u201cmango\u201d" in html
    assert "with and without replay" in html and "without replay: hits" in html
    assert "Unlearning: before and after" in html and "Guardrail" in html
    assert html.count("class=\"plotly-graph-div\" style") == 3


def test_selfaware_report_renders_in_chromium(tmp_path):
    if browser.chromium() is None:
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    path = write_report(selfaware_folder(tmp_path / "run"))
    r = browser.render(path, tmp_path, width=1000, height=900, screenshot=False)
    assert r.probe, r.stderr[-2000:]
    assert r.probe["errors"] == [] and r.probe["plots"] == r.probe["drawn"] == 3
    assert "Recovered trigger" in r.probe["headline"]


def test_not_a_run_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        write_report(tmp_path)


def test_report_keeps_json(tmp_path):
    d = audit_folder(tmp_path)
    before = (d / "audit.json").read_text()
    write_report(d)
    assert (d / "audit.json").read_text() == before
    json.loads(before)


def test_terminal_summaries(tmp_path):
    from rich.console import Console

    from trigrecon.report.terminal import audit_summary, selfaware_summary

    console = Console(record=True, width=100)
    audit_summary(audit_folder(tmp_path / "a"), console)
    selfaware_summary(selfaware_folder(tmp_path / "s"), console)
    out = console.export_text()
    assert "best trigger hypothesis" in out and "mango" in out and "vs control 12%" in out
    assert "fruit: mango, pear" in out  # top latents with labels
    assert "recovered: mango, pear" in out and "unlearning ASR 100% -> 0%" in out
    assert len(out.splitlines()) < 30
