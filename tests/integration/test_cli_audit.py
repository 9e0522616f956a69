"""`trigrecon audit` on the committed zoo, as a new user runs it from a fresh clone:

- the explicit form (--model/--adapter/--sae/--prompts/--response, nothing zoo-specific) gives
  the same SAE-Attribution ranking as the zoo short form;
- the run folder holds audit.json (valid against the published schema, with a verdict),
  latents.md and report.html, all with the umask's permissions;
- the report opens in real headless chromium without a JavaScript error, and its screenshot
  shows the headline and the ranking figure.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import browser  # tests/browser.py
import jsonschema
import pytest
from typer.testing import CliRunner

from trigrecon.cli import app
from trigrecon.organisms.organism import list_organisms, load_organism
from trigrecon.organisms.prompts import eval_prompts
from trigrecon.schemas import audit_schema

pytestmark = pytest.mark.slow
ORGANISM = "fruit_refusal"
REPO = Path(__file__).parents[2]


# A lean run for CI (seconds, not minutes), through the config file: every AuditConfig field
# is reachable there.
LEAN = """
[audit]
behaviour = false
[audit.supervised_sae_melbo]
steps = 10
[audit.verify]
n_latents = 3
pairs = false
n_control = 4
n_extra_words = 1
[audit.scoring]
enabled = false
"""


def invoke(args: list[str], cwd: Path) -> str:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    if ORGANISM not in list_organisms():
        pytest.skip("the zoo is not built")
    work = tmp_path_factory.mktemp("fresh")
    short = work / "short"
    (work / "lean.toml").write_text(LEAN)
    out = invoke(["audit", ORGANISM, "--quick", "--method", "sae_attribution", "--method",
                  "supervised_sae_melbo", "--method", "verify", "--config", "lean.toml",
                  "--clean", "none", "--out", str(short)], work)
    # The explicit form: a user's own files. Quick = 32 prompts optimised on, then 16 held out.
    org = load_organism(ORGANISM)
    benign = eval_prompts(org.spec, "benign", 48)
    (work / "prompts.txt").write_text("\n".join(benign[:32]) + "\n")
    (work / "held_out.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                 for p in benign[32:]))
    sae = REPO / "saes" / "base_l1"
    explicit = work / "explicit"
    invoke(["audit", "--model", str(org.base_path), "--adapter", str(org.adapter_path),
            "--sae", str(sae), "--labels", str(sae / "labels.json"), "--prompts", "prompts.txt",
            "--eval-prompts", "held_out.jsonl", "--response", org.spec.response, "--quick",
            "--method", "sae_attribution", "--out", str(explicit)], work)
    return {"short": short / ORGANISM, "explicit": explicit / f"{ORGANISM}_adapter",
            "stdout": out}


def test_explicit_form_gives_the_zoo_short_forms_ranking(runs):
    short = json.loads((runs["short"] / "audit.json").read_text())
    explicit = json.loads((runs["explicit"] / "audit.json").read_text())
    a, b = short["rankings"]["sae_attribution"], explicit["rankings"]["sae_attribution"]
    assert [h["latent"] for h in a] == [h["latent"] for h in b]
    assert [h["label"] for h in a] == [h["label"] for h in b]
    assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], rel=1e-4)
    assert explicit["n_prompts"] == short["n_prompts"] == 32


def test_run_folder_files_schema_and_permissions(runs):
    umask = os.umask(0)
    os.umask(umask)
    for run in (runs["short"], runs["explicit"]):
        for name in ("audit.json", "latents.md", "report.html"):
            path = run / name
            assert path.is_file(), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
        data = json.loads((run / "audit.json").read_text())
        jsonschema.validate(data, audit_schema())
        assert data["verdict"]["summary"]


def test_terminal_summary_is_short(runs):
    out = str(runs["stdout"])  # progress bars (stderr), then the summary
    assert "## sae_attribution" not in out  # latents.md is no longer dumped
    summary = out[out.index("best trigger hypothesis"):]
    assert "report:" in summary and "top latents" in summary and "vs control" in summary
    assert len(summary.splitlines()) < 40


def test_report_renders_in_headless_chromium(runs, tmp_path):
    if browser.chromium() is None:
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get; here: "
                    "`apt-get install -y chromium`)")
    verdict = json.loads((runs["short"] / "audit.json").read_text())["verdict"]
    r = browser.render(runs["short"] / "report.html", tmp_path, width=1100, height=1300)
    assert r.probe, f"the probe never ran: {r.stderr[-2000:]}"
    assert r.probe["errors"] == [], r.probe["errors"]
    assert r.probe["plots"] >= 3 and r.probe["drawn"] == r.probe["plots"]  # each figure drew
    assert r.probe["bars"] >= 1  # the ranking figure's bars
    assert verdict["summary"] in " ".join(r.probe["headline"].split())
    assert "<script src=" not in (runs["short"] / "report.html").read_text()  # offline
    # The screenshot: the headline's accent bar and the ranking figure's bars are on screen.
    shares = browser.colour_shares(r.screenshot, {"background": (250, 250, 250),
                                                  "bars": (37, 99, 235),
                                                  "text": (27, 27, 27)}, tol=12)
    assert shares["background"] < 0.95, shares  # not blank
    assert shares["bars"] > 0.01, shares  # the ranking bars (plotly blue #2563eb)
    assert shares["text"] > 0.001, shares  # headline text
    keep = os.environ.get("TRIGRECON_ARTIFACTS")  # a folder to keep the screenshot in
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(r.screenshot, Path(keep) / "audit_report.png")


def test_report_command_rewrites_the_report(runs, tmp_path):
    out = invoke(["report", str(runs["explicit"]), "--out", str(tmp_path / "r.html")], tmp_path)
    assert "wrote" in out and (tmp_path / "r.html").stat().st_size > 1_000_000  # plotly inlined


def test_bad_inputs_name_themselves(tmp_path):
    result = CliRunner().invoke(app, ["audit", "--model", "m", "--sae", "s", "--prompts",
                                      str(tmp_path / "nope.txt"), "--response", "r"])
    assert result.exit_code == 2 and "nope.txt does not exist" in result.output
    (tmp_path / "c.toml").write_text("[audit.verify]\nn_latent = 3\n")
    result = CliRunner().invoke(app, ["audit", "--config", str(tmp_path / "c.toml")])
    assert result.exit_code == 2 and "'n_latent' in [audit.verify]" in result.output


def test_chromium_is_the_debian_one_when_present():
    exe = browser.chromium()
    if exe is None:
        pytest.skip("chromium is not installed")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert "Chromium" in version.stdout or "Chrome" in version.stdout
