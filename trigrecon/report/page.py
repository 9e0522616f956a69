"""A self-contained HTML page: a headline, sections of text, tables and plotly figures.

plotly.js is inlined once (the first figure, `include_plotlyjs=True`): the page opens offline,
with no CDN. Everything else is escaped text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1b1b1b;
     background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
.headline{background:#fff;border-left:6px solid #2563eb;padding:16px 20px;margin-bottom:18px;
          box-shadow:0 1px 3px rgba(0,0,0,.08)}
.headline h1{font-size:1.45em;margin:0 0 8px}
.headline.conf-high{border-color:#15803d}.headline.conf-medium{border-color:#ca8a04}
.headline.conf-low,.headline.conf-none{border-color:#b91c1c}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-size:.85em;color:#fff;
       background:#6b7280;margin-right:6px}
.badge.high{background:#15803d}.badge.medium{background:#ca8a04}.badge.low,.badge.none{background:#b91c1c}
.meta{color:#555;font-size:.9em}
section{background:#fff;margin:14px 0;padding:12px 18px;box-shadow:0 1px 3px rgba(0,0,0,.06)}
h2{font-size:1.15em;margin:6px 0 10px}
table{border-collapse:collapse;font-size:.88em;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f1f5f9}
code{background:#f1f5f9;padding:0 3px}
"""


@dataclass
class Page:
    title: str
    headline: str
    """The one sentence a reader must see first."""
    confidence: str = ""
    evidence: list[str] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    _plotly_inlined: bool = False

    def section(self, title: str, *html_parts: str) -> None:
        self.parts.append(f"<section><h2>{html.escape(title)}</h2>{''.join(html_parts)}</section>")

    def figure(self, fig: Any) -> str:
        """The figure as an HTML fragment (plotly.js inlined into the first one)."""
        out = fig.to_html(full_html=False, include_plotlyjs=not self._plotly_inlined,
                          config={"displaylogo": False, "responsive": True})
        self._plotly_inlined = True
        return str(out)

    def render(self) -> str:
        conf = html.escape(self.confidence or "none")
        badge = f'<span class="badge {conf}">confidence: {conf}</span>' if self.confidence else ""
        evidence = "".join(f"<li>{html.escape(e)}</li>" for e in self.evidence)
        meta = "<br>".join(html.escape(m) for m in self.meta)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body><main>"
            f'<div class="headline conf-{conf}" id="headline"><h1>{html.escape(self.headline)}'
            f"</h1>{badge}<ul>{evidence}</ul><div class=\"meta\">{meta}</div></div>"
            + "".join(self.parts) + "</main></body></html>\n"
        )


def text(s: str) -> str:
    return f"<p>{html.escape(s)}</p>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3f}"
        return html.escape("–" if x is None else str(x))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(x)}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) else f"{x:.0%}"
