"""Plotly figures of GRPO training curves (consumes `TrainingCurves`; the core never imports plotly)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from trigrecon.core.io import write_text
from trigrecon.selfaware.metrics import TrainingCurves, moving_average

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def curves_figure(
    runs: Mapping[str, TrainingCurves] | TrainingCurves,
    window: int = 5,
    title: str = "Backdoor self-awareness: GRPO training",
) -> go.Figure:
    """Elicitation accuracy (hit / works, moving average) and rewards per step, one colour per run;
    a dotted line marks each run's emergence point."""
    runs = {"run": runs} if isinstance(runs, TrainingCurves) else dict(runs)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("trigger elicitation accuracy (emergence curve)", "reward"),
    )
    for i, (name, c) in enumerate(runs.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        for key, dash in (("hit_rate", "solid"), ("work_rate", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=c.steps,
                    y=moving_average(c.series(key), window),
                    name=f"{name}: {key.replace('_rate', '')}s",
                    line={"color": colour, "dash": dash},
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=c.steps,
                y=c.series("hit_rate"),
                mode="markers",
                opacity=0.25,
                marker={"color": colour, "size": 4},
                showlegend=False,
                name=f"{name}: hits (raw)",
            ),
            row=1,
            col=1,
        )
        for key, dash in (("mean_reward", "solid"), ("max_reward", "dash")):
            fig.add_trace(
                go.Scatter(
                    x=c.steps,
                    y=c.series(key),
                    name=f"{name}: {key}",
                    line={"color": colour, "dash": dash},
                ),
                row=2,
                col=1,
            )
        step = c.emergence()["step"]
        if step is not None:
            fig.add_vline(x=step, line={"color": colour, "dash": "dot"}, row=1, col=1)
    fig.add_hline(y=0.5, line={"color": "gray", "dash": "dash"}, row=1, col=1)
    fig.update_yaxes(range=[-0.02, 1.02], title_text="share", row=1, col=1)
    fig.update_yaxes(title_text="reward", row=2, col=1)
    fig.update_xaxes(title_text="GRPO step", row=2, col=1)
    fig.update_layout(title=title, height=700, template="plotly_white")
    return fig


def save_figure(fig: go.Figure, path: str | Path) -> Path:
    """Write a self-contained HTML file (plotly.js inlined: opens offline)."""
    path = Path(path)
    write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path
