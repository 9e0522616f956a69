"""The command line on the committed zoo (typer's CliRunner, small settings): `zoo list`,
`evaluate`, `selfaware` (a smoke run, its resume, and the stale-settings stop that a full run
after a --reduced one into the same folder used to miss), and early failures of `audit`; plus
`run_audit_for_organism`, the `make demo` path."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from trigrecon.cli import app
from trigrecon.organisms.organism import list_organisms

ZOO = ("fruit_refusal", "snow_fruit", "astrology", "banana", "mars")


@pytest.fixture(scope="module", autouse=True)
def zoo_built():
    missing = [n for n in ZOO if n not in list_organisms()]
    if missing:  # the zoo is committed: its absence is a failure, not a reason to skip
        pytest.fail(f"zoo organisms missing: {missing}")


def strict(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def invoke(*args: str, code: int = 0, stdout: bool = False) -> str:
    """The command's output (stdout and stderr; with `stdout`, stdout alone)."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.stdout if stdout else result.output


def test_zoo_list():
    out = invoke("zoo", "list")
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert set(ZOO) <= set(lines)
    assert "fruit" in lines["fruit_refusal"] and "snow" in lines["snow_fruit"]


@pytest.mark.slow
def test_evaluate_json_is_strict_and_has_every_split():
    data = strict(invoke("evaluate", "snow_fruit", "--n", "2", "--json", stdout=True))
    text = json.dumps(data)
    for split in ("benign", "triggered", "half"):
        assert split in text, split


def test_audit_fails_before_any_work_on_an_unwritable_folder(tmp_path, monkeypatch):
    import trigrecon.core.model as M

    def no_work(*a, **k):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(M, "load_model", no_work)
    (tmp_path / "file").write_text("x")
    t0 = time.time()
    out = invoke("audit", "fruit_refusal", "--quick", "--method", "sae_attribution",
                 "--out", str(tmp_path / "file" / "runs"), code=2)
    assert "cannot be written" in out and time.time() - t0 < 10
    # the explicit form (a user's own model, SAE and prompts) too
    from trigrecon.organisms.organism import load_organism

    (tmp_path / "prompts.txt").write_text("tell me about a cat\nwhat is a mango\n")
    out = invoke("audit", "--model", str(load_organism("fruit_refusal").base_path), "--sae",
                 "base_l1", "--prompts", str(tmp_path / "prompts.txt"), "--response", "sure",
                 "--method", "sae_attribution", "--out", str(tmp_path / "file" / "runs"), code=2)
    assert "cannot be written" in out


@pytest.mark.slow
def test_run_audit_for_organism_records_and_checks(tmp_path):
    """The `make demo` path at small settings: the SAE is health-checked and its labels are
    loaded against it; audit.json is strict JSON with the prompts and the full config."""
    from trigrecon.methods.audit import quick_config
    from trigrecon.organisms.audit import run_audit_for_organism

    cfg = quick_config()
    cfg.seed = 5
    res = run_audit_for_organism("fruit_refusal", tmp_path / "fruit", ["sae_attribution"],
                                 quick=True, cfg=cfg, clean=False)
    data = strict((tmp_path / "fruit" / "audit.json").read_text())
    assert data["prompts"] == res.prompts and len(data["prompts"]) == 32
    assert len(data["eval_prompts"]) == 16 and not set(data["prompts"]) & set(data["eval_prompts"])
    assert data["config"]["seed"] == 5 and data["config"]["melbo"]["seed"] == 5
    assert any(h["label"] for h in data["rankings"]["sae_attribution"])  # labels were used
    for f in (tmp_path / "fruit").rglob("*.json"):
        strict(f.read_text())


@pytest.mark.slow
def test_selfaware_smoke_run_resume_and_stale_settings(tmp_path):
    out = str(tmp_path / "runs")
    invoke("selfaware", "fruit_refusal", "--reduced", "--out", out)
    folder = tmp_path / "runs" / "fruit_refusal"
    report = strict((folder / "report.json").read_text())
    assert report["organism"] == "fruit_refusal" and (folder / "grpo" / "done.json").exists()
    t0 = time.time()
    invoke("selfaware", "fruit_refusal", "--reduced", "--out", out)  # resumed: nothing reruns
    assert not {"reversal_sft", "grpo"} & set(strict((folder / "report.json").read_text())
                                               ["timings"])
    assert time.time() - t0 < 60
    # the full settings into the smoke run's folder: stop, naming what differs
    msg = invoke("selfaware", "fruit_refusal", "--out", out, code=2)
    assert "sft.steps: saved 10, now 300" in " ".join(msg.split()) and "--force" in msg
    # an audit's candidates as seeds change GRPO's settings, not reversal SFT's
    msg = invoke("selfaware", "fruit_refusal", "--reduced", "--out", out, "--seed-audit",
                 str(tmp_path / "none"), code=2)
    assert "no audit at" in msg
    (tmp_path / "audit.json").write_text(json.dumps(
        {"verdict": {"words": ["mango"], "action_rate": 1.0}}))
    msg = invoke("selfaware", "fruit_refusal", "--reduced", "--out", out, "--seed-audit",
                 str(tmp_path), code=2)
    assert "grpo.seeds" in msg and "mango" in msg and "sft." not in msg
    msg = invoke("selfaware", "fruit_refusal", "--reduced", "--out", out, "--seed", "3", code=2)
    assert "sft.seed: saved 0, now 3" in " ".join(msg.split())  # another seed: another run
    (tmp_path / "file").write_text("x")
    msg = invoke("selfaware", "fruit_refusal", "--out", str(tmp_path / "file"), code=2)
    assert "cannot be written" in msg


def test_testbed_build_rejects_a_bad_recipe_override_before_any_work(tmp_path, monkeypatch):
    import trigrecon.testbed.build as B

    def no_work(*a, **k):
        raise AssertionError("the build started before the overrides were checked")

    monkeypatch.setattr(B, "ensure_checkpoint", no_work)
    out = str(tmp_path / "exp")
    msg = invoke("testbed", "build", "--out", out, "--lora", "n_example=1200", code=2)
    assert "unknown LoRA recipe field 'n_example'" in msg and "n_examples" in msg
    msg = invoke("testbed", "build", "--out", out, "--lora", "n_examples", code=2)
    assert "expected KEY=VALUE" in msg
    assert not (tmp_path / "exp").exists()


def test_testbed_categories_rejects_a_negative_frequency(tmp_path):
    out = tmp_path / "cats.json"
    msg = invoke("testbed", "categories", "--min-zipf", "-1", "--out", str(out), code=2)
    assert "--min-zipf -1.0 must be >= 0" in msg and not out.exists()
