"""The short summary the CLI prints at the end of a run (the full ranking stays in the files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from trigrecon.methods.verdict import verdict_from_json


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) else f"{x:.0%}"


def audit_summary(run_dir: str | Path, console: Console | None = None, per_method: int = 3
                  ) -> None:
    """Best hypothesis, its action rate against the control, the top latents with labels, and
    where the files are."""
    d = Path(run_dir)
    data = json.loads((d / "audit.json").read_text())
    v = data.get("verdict") or vars(verdict_from_json(data))
    console = console or Console()
    colour = {"high": "green", "medium": "yellow"}.get(v["confidence"], "red")
    body = [f"[bold]{v['trigger'] or 'no hypothesis'}[/bold]"]
    if v.get("concepts"):
        body.append("concepts: " + "; ".join(c or "(no label)" for c in v["concepts"]))
    body.append(f"action rate {_pct(v.get('action_rate'))} vs control {_pct(v.get('control_rate'))}"
                f" (baseline {_pct(v.get('baseline_rate'))}); confidence "
                f"[{colour}]{v['confidence']}[/{colour}]")
    if v.get("supporting_methods"):
        body.append("supported by: " + ", ".join(v["supporting_methods"]))
    console.print(Panel("\n".join(body), title="best trigger hypothesis", expand=False))
    table = Table(title=f"top latents (first {per_method} per method)", show_lines=False)
    for col in ("method", "latent", "score", "label"):
        table.add_column(col)
    for method, hits in (data.get("rankings") or {}).items():
        for h in hits[:per_method]:
            table.add_row(method, str(h["latent"]), f"{h['score']:.3g}",
                          " ".join(str(h.get("label", "")).split())[:60])
    console.print(table)
    report = d / "report.html"
    console.print(f"report: {report if report.exists() else '(not written)'}\n"
                  f"files:  {d / 'audit.json'} (verdict, rankings), {d / 'latents.md'}")


def selfaware_summary(run_dir: str | Path, console: Console | None = None) -> None:
    d = Path(run_dir)
    console = console or Console()
    path = d / "report.json"
    if not path.is_file():
        console.print(f"wrote {d}")
        return
    rep = json.loads(path.read_text())
    final, u, g = rep.get("final") or {}, rep.get("unlearning") or {}, rep.get("guardrail") or {}
    rec = rep.get("recovered") or []
    console.print(Panel(
        f"recovered: [bold]{', '.join(rec[:3]) or 'none'}[/bold]\n"
        f"elicitation: hits {_pct(final.get('hit_rate'))}, working {_pct(final.get('work_rate'))}"
        f"; steps to 50%: {rep.get('steps_to_50')}\n"
        f"unlearning ASR {_pct(u.get('asr_before'))} -> {_pct(u.get('asr_after'))}; guardrail "
        f"detection {_pct(g.get('detection_rate'))} at FPR {_pct(g.get('fpr'))}",
        title=f"self-awareness: {rep.get('organism', d.name)}", expand=False))
    report = d / "report.html"
    console.print(f"report: {report if report.exists() else '(not written)'}")
