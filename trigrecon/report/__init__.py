"""Self-contained HTML reports of saved runs (plotly, offline). Reports read the saved files of
a run folder; the toolkit's core never imports plotly.

    write_report("runs/audit/fruit_refusal")      # audit.json -> report.html
    write_report("runs/selfaware/fruit_refusal")  # report.json (self-awareness) -> report.html
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from trigrecon.core.errors import ConfigError

__all__ = ["REPORT_NAME", "write_report", "write_audit_report", "write_selfaware_report"]

REPORT_NAME = "report.html"


def write_audit_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    from trigrecon.report.audit import write_audit_report as write

    return write(run_dir, out)


def write_selfaware_report(run_dir: str | Path, out: str | Path | None = None,
                           extra_curves: Mapping[str, str | Path] | None = None) -> Path:
    from trigrecon.report.selfaware import write_selfaware_report as write

    return write(run_dir, out, extra_curves)


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 extra_curves: Mapping[str, str | Path] | None = None) -> Path:
    """report.html of an audit folder (audit.json) or a self-awareness folder (report.json)."""
    d = Path(run_dir)
    if (d / "audit.json").is_file():
        return write_audit_report(d, out)
    if (d / "report.json").is_file() or (d / "grpo" / "curves.json").is_file():
        return write_selfaware_report(d, out, extra_curves)
    raise ConfigError(f"{d} is not a run folder: no audit.json (an audit) and no report.json or "
                      "grpo/curves.json (a self-awareness run)")
