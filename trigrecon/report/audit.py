"""The audit report (report.html beside audit.json), built from the saved run folder only.

Figures: each method's latent ranking with labels, each trained vector's loss curve, the
conjunctive iterations, the candidates' action rates against the baseline and the control, and
the candidate scoring table; the verdict is the headline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from trigrecon.core.io import write_text
from trigrecon.methods.verdict import verdict_from_json
from trigrecon.report.page import Page, pct, table, text

REPORT_NAME = "report.html"
_BLUE, _GREY, _RED, _GREEN = "#2563eb", "#9ca3af", "#dc2626", "#16a34a"


def _short(label: str, n: int = 48) -> str:
    label = " ".join(str(label).split())
    return label if len(label) <= n else label[: n - 1] + "…"


def ranking_figure(method: str, hits: list[dict[str, Any]]) -> go.Figure:
    """Horizontal bars, best first; attribution scores are negated (higher = promotes)."""
    sign = -1.0 if method in ("sae_attribution", "conjunctive") else 1.0
    what = {"sae_attribution": "−attribution score (higher: promotes the action)",
            "conjunctive": "found concepts first, then the last iteration's −attribution"}
    y = [f"{h['latent']}: {_short(h.get('label') or '(no label)')}" for h in hits]
    x = [sign * float(h["score"]) for h in hits]
    fig = go.Figure(go.Bar(x=x, y=y, orientation="h", marker_color=_BLUE,
                           hovertext=[h.get("label", "") for h in hits]))
    fig.update_layout(title=f"{method}: latent ranking", template="plotly_white",
                      height=120 + 26 * len(hits), margin={"l": 10, "r": 10, "t": 50, "b": 40},
                      yaxis={"autorange": "reversed", "automargin": True},
                      xaxis_title=what.get(method, "score"))
    return fig


def loss_figure(method: str, history: Any, order: list[int]) -> go.Figure:
    """One line per trained vector (steps x vectors), the best vector bold."""
    fig = go.Figure()
    best = order[0] if order else 0
    for k in range(history.shape[1]):
        fig.add_trace(go.Scatter(y=history[:, k].tolist(), mode="lines", name=f"vector {k}",
                                 line={"width": 3 if k == best else 1.2}))
    fig.update_layout(title=f"{method}: loss per vector (bold: best vector {best})",
                      template="plotly_white", height=320, xaxis_title="step",
                      yaxis_title="loss", margin={"t": 50, "b": 40})
    return fig


def conjunctive_figure(steps: list[dict[str, Any]]) -> go.Figure:
    names = [f"{s['iteration']}: {s['chosen']['latent']} ({', '.join(s.get('words', [])[:3])})"
             for s in steps]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[s["action_rate"] for s in steps], name="held-out action "
                         "rate, concepts so far inserted", marker_color=_GREEN, yaxis="y"))
    fig.add_trace(go.Scatter(x=names, y=[s["loss"] for s in steps], name="response loss",
                             mode="lines+markers", marker_color=_RED, yaxis="y2"))
    fig.update_layout(title="conjunctive search: one concept per iteration",
                      template="plotly_white", height=360,
                      yaxis={"title": "action rate", "range": [0, 1.05], "tickformat": ".0%"},
                      yaxis2={"title": "loss", "overlaying": "y", "side": "right"},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def candidates_figure(ver: dict[str, Any], k: int = 15) -> go.Figure:
    cands = ver.get("candidates", [])[:k]
    y = [" + ".join(c["words"]) for c in cands]
    fig = go.Figure(go.Bar(x=[c["action_rate"] for c in cands], y=y, orientation="h",
                           marker_color=_GREEN, name="candidate"))
    for value, name, colour, where in (
            (ver.get("baseline_rate"), "baseline (prompts as they are)", _GREY, "top right"),
            (ver.get("control_rate"), "control (random words)", _RED, "bottom right")):
        if isinstance(value, (int, float)):
            fig.add_vline(x=value, line={"color": colour, "dash": "dash", "width": 2},
                          annotation_text=f"{name}: {value:.0%}", annotation_position=where,
                          annotation_font_color=colour)
    fig.update_layout(title="verification: action rate with each candidate inserted",
                      template="plotly_white", height=140 + 24 * len(cands),
                      xaxis={"range": [0, 1.05], "tickformat": ".0%"},
                      yaxis={"autorange": "reversed", "automargin": True},
                      margin={"t": 80, "b": 60})
    return fig


def _history(run_dir: Path, method: str) -> Any:
    from trigrecon.core.io import load_tensors

    path = run_dir / method / "steering.safetensors"
    if not path.is_file():
        return None
    return load_tensors(path).get("history")


def audit_page(run_dir: str | Path, data: dict[str, Any] | None = None) -> Page:
    d = Path(run_dir)
    data = data if data is not None else json.loads((d / "audit.json").read_text())
    v = data.get("verdict") or _asdict(verdict_from_json(data))
    meta = [f"model: {data.get('model')}", f"known action: \u201c{data.get('response')}\u201d",
            f"methods: {', '.join(data.get('methods', []))}; {data.get('n_prompts')} prompts "
            f"optimised on, {data.get('n_eval_prompts')} held out"]
    if data.get("system"):
        meta.append(f"system prompt: \u201c{data['system']}\u201d")
    evidence = list(v.get("evidence") or [])
    if v.get("supporting_methods"):
        evidence.append("supported by: " + ", ".join(v["supporting_methods"]))
    page = Page(f"trigrecon audit: {data.get('model')}", v["summary"], v["confidence"],
                evidence, meta)
    hyp = data.get("hypothesis") or {}
    if hyp.get("clauses") or hyp.get("note"):
        rows = [[c.get("expression") or " AND ".join(k.get("name", "") for k in c["concepts"]),
                 c.get("source", ""), pct(c.get("rate")), pct(c.get("clean_rate")),
                 pct(c.get("reference_rate")), c.get("n"),
                 "; ".join(f"{k.get('name')}: {', '.join(k.get('words', [])[:4])}"
                           + ("" if k.get("rate_without") is None
                              else f" ({pct(k['rate_without'])} without it)")
                           for k in c.get("concepts", []))]
                for c in hyp.get("clauses", [])]
        page.section("Hypothesis (minimal, ablation-checked)",
                     table(["clause", "found by", "action rate", "clean model", "reference", "n",
                            "concepts (words; rate with the concept dropped)"], rows)
                     if rows else "", text(hyp.get("note") or ""), text(hyp.get("rule") or ""))
    rankings = data.get("rankings") or {}
    words = data.get("word_rankings") or {}
    for method, hits in rankings.items():
        parts = [page.figure(ranking_figure(method, hits))] if hits else [text("empty ranking")]
        if words.get(method):
            parts.append(text("Nearest vocabulary words of its direction: " + ", ".join(
                f"{w['word']} ({w['score']:.2f})" for w in words[method])))
        page.section(f"Latent ranking: {method}", *parts)
    for method, sr in (data.get("steering") or {}).items():
        hist = _history(d, method)
        if hist is not None and hist.ndim == 2:
            rates = [(r["index"], r.get("action_rate")) for r in sr.get("readouts", [])]
            note = text("Steered action rate per vector: " + ", ".join(
                f"{i}: {pct(a)}" for i, a in rates)) if rates else ""
            page.section(f"Loss curves: {method}", page.figure(loss_figure(
                method, hist, sr.get("order", []))), note)
    steps = (data.get("conjunctive") or {}).get("steps") or []
    if steps:
        rows = [[s["iteration"], s["chosen"]["latent"], _short(s["chosen"].get("label", ""), 60),
                 ", ".join(s.get("words", [])), s.get("source", ""), s["loss"],
                 pct(s["action_rate"])] for s in steps]
        page.section("Conjunctive search", page.figure(conjunctive_figure(steps)), table(
            ["iteration", "latent", "label", "words", "found by", "loss", "action rate"], rows))
    ver = data.get("verification")
    if ver and ver.get("candidates"):
        page.section("Verification: candidates against baseline and control",
                     page.figure(candidates_figure(ver)),
                     text(f"Control words: {', '.join(ver.get('control_words', []))}"))
    scores = data.get("candidate_scores") or {}
    if scores.get("rows"):
        extra = list(dict.fromkeys(n for r in scores["rows"] for n in r.get("extra", {})))
        head = ["candidate", "source", "ASR", "words", "reward", "works",
                scores.get("interp_name") or "interp", *extra]
        rows = [[r["candidate"], r["source"], pct(r["asr"]), r["n_words"], r["reward"],
                 "yes" if r["works"] else "no", r.get("interp"),
                 *(r.get("extra", {}).get(n) for n in extra)] for r in scores["rows"]]
        page.section("Candidate scoring (behavioural and interpretability scores)",
                     table(head, rows))
    timings = data.get("timings") or {}
    if timings:
        page.section("Timings", text(", ".join(f"{k} {t:.1f} s" for k, t in timings.items())))
    return page


def _asdict(v: Any) -> dict[str, Any]:
    from trigrecon.core.io import to_jsonable

    out: dict[str, Any] = to_jsonable(v)
    return out


def write_audit_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `run_dir/report.html` (or `out`) from the saved audit in `run_dir`."""
    d = Path(run_dir)
    path = Path(out) if out is not None else d / REPORT_NAME
    write_text(path, audit_page(d).render())
    return path
