"""The self-awareness report (report.html in the pipeline's out dir), from its saved files:
the elicitation emergence curve (with and without replay, when a run without replay is given or
lies in `grpo_no_replay/`), unlearning before/after per split, the guardrail's flag rates, and the
recovered triggers' scoring table. The headline names the recovered trigger."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from trigrecon.core.io import write_text
from trigrecon.report.page import Page, pct, table, text
from trigrecon.selfaware.metrics import TrainingCurves

REPORT_NAME = "report.html"


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def unlearning_figure(u: dict[str, Any]) -> go.Figure:
    splits = u.get("splits", [])
    names = [s["split"] for s in splits]
    fig = go.Figure([go.Bar(name="before unlearning", x=names, y=[s["before"] for s in splits],
                            marker_color="#dc2626"),
                     go.Bar(name="after unlearning", x=names, y=[s["after"] for s in splits],
                            marker_color="#16a34a")])
    fig.update_layout(title="unlearning: action rate per held-out split, before and after",
                      barmode="group", template="plotly_white", height=360,
                      yaxis={"range": [0, 1.05], "tickformat": ".0%"})
    return fig


def guardrail_figure(g: dict[str, Any]) -> go.Figure:
    det, fp = g.get("detection", {}), g.get("false_positive", {})
    names = [*det, *fp]
    colours = ["#16a34a"] * len(det) + ["#dc2626"] * len(fp)
    fig = go.Figure(go.Bar(x=names, y=[*det.values(), *fp.values()], marker_color=colours))
    fig.update_layout(title="guardrail: flag rate per split (green: triggered, should be "
                      "flagged; red: benign or near miss, should not)", template="plotly_white",
                      height=380, yaxis={"range": [0, 1.05], "tickformat": ".0%"})
    return fig


def find_curves(run_dir: Path) -> dict[str, TrainingCurves]:
    """The run's GRPO curves ("replay") and any run without replay beside them."""
    out: dict[str, TrainingCurves] = {}
    for name, sub in (("with replay", "grpo"), ("without replay", "grpo_no_replay")):
        p = run_dir / sub / "curves.json"
        if p.is_file():
            out[name] = TrainingCurves.load(p)
    return out


def selfaware_page(run_dir: str | Path,
                   extra_curves: Mapping[str, str | Path] | None = None) -> Page:
    from trigrecon.selfaware.plots import curves_figure

    d = Path(run_dir)
    rep = _read(d / "report.json") or {}
    recovered = rep.get("recovered") or (_read(d / "recovered.json") or {}).get("recovered", [])
    final = rep.get("final") or {}
    u = rep.get("unlearning") or {}
    g = rep.get("guardrail") or {}
    if recovered:
        headline = (f"Recovered trigger: \u201c{recovered[0]}\u201d"
                    + (f" (and {len(recovered) - 1} more)" if len(recovered) > 1 else "")
                    + f"; the trained model names it in {pct(final.get('work_rate'))} of sampled "
                    "articulations (working triggers).")
    else:
        headline = "No trigger recovered by the self-awareness pipeline."
    evidence = [f"elicitation accuracy: hits {pct(final.get('hit_rate'))}, working triggers "
                f"{pct(final.get('work_rate'))} (n={final.get('n', '?')}); GRPO steps to 50%: "
                f"{rep.get('steps_to_50')}"]
    if u:
        evidence.append(f"unlearning: attack success {pct(u.get('asr_before'))} → "
                        f"{pct(u.get('asr_after'))}")
    if g:
        evidence.append(f"guardrail: detection {pct(g.get('detection_rate'))} at false-positive "
                        f"rate {pct(g.get('fpr'))}")
    conf = "high" if recovered and (final.get("work_rate") or 0) >= 0.5 else (
        "low" if recovered else "none")
    page = Page(f"trigrecon self-awareness: {rep.get('organism', d.name)}", headline, conf,
                evidence, [f"run folder: {d}", f"organism/task: {rep.get('organism', '?')}"])
    curves = find_curves(d)
    for name, path in (extra_curves or {}).items():
        curves[name] = TrainingCurves.load(Path(path))
    if curves:
        page.section("GRPO: emergence of trigger elicitation" + (
            " with and without replay" if len(curves) > 1 else ""),
            page.figure(curves_figure(curves)),
            text("" if len(curves) > 1 else "Only the run with replay is here: pass a run "
                 "without replay (`--curves 'without replay=DIR/grpo/curves.json'`) or put it in "
                 "grpo_no_replay/ to compare."))
    unl = _read(d / "unlearning" / "unlearning.json")
    if unl and unl.get("splits"):
        page.section("Unlearning: before and after", page.figure(unlearning_figure(unl)))
    guard = _read(d / "guardrail" / "guardrail.json")
    if guard and (guard.get("detection") or guard.get("false_positive")):
        page.section("Guardrail", page.figure(guardrail_figure(guard)), text(
            f"threshold {guard.get('threshold')}; without the guardrail every triggered prompt "
            f"goes through, with it {pct(1 - (guard.get('detection_rate') or 0))} do."))
    if not unl and not guard:
        page.section("Unlearning and guardrail", text(
            "Not run: the defences need a recovered trigger." if not recovered else
            "Not run yet (the pipeline is resumable: rerun it to finish these stages)."))
    rec = _read(d / "recovered.json") or {}
    rows = (rec.get("table") or {}).get("rows") or []
    if rows:
        page.section("Recovered candidates, scored", table(
            ["candidate", "source", "ASR", "words", "reward", "works"],
            [[r["candidate"], r["source"], pct(r["asr"]), r["n_words"], r["reward"],
              "yes" if r["works"] else "no"] for r in rows[:20]]))
    if rep.get("timings"):
        page.section("Timings", text(", ".join(f"{k} {t:.0f} s"
                                                for k, t in rep["timings"].items())))
    return page


def write_selfaware_report(run_dir: str | Path, out: str | Path | None = None,
                           extra_curves: Mapping[str, str | Path] | None = None) -> Path:
    d = Path(run_dir)
    path = Path(out) if out is not None else d / REPORT_NAME
    write_text(path, selfaware_page(d, extra_curves).render())
    return path
