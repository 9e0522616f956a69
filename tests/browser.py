"""Render an HTML file in real headless chromium: DOM after scripts ran, JS errors, screenshot.

A probe script is injected first thing in <head> (a copy of the page is rendered, never the
original): it records every uncaught error, unhandled rejection and console.error into the DOM,
and after load counts the plotly figures that drew an SVG. `--dump-dom` then returns that DOM.
Chromium comes from Debian (`apt-get install chromium`; `.ci/run` installs it when missing).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + (e.message || e)));
window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' + e.reason));
(function () { const orig = console.error; console.error = function (...a) {
  window.__errors.push('console.error: ' + a.join(' ')); orig.apply(console, a); }; })();
window.addEventListener('load', () => setTimeout(() => {
  const p = document.createElement('pre'); p.id = '__probe';
  p.textContent = JSON.stringify({errors: window.__errors,
    plots: document.querySelectorAll('.js-plotly-plot').length,
    drawn: [...document.querySelectorAll('.js-plotly-plot')].filter(
      p => p.querySelector('.main-svg')).length,
    bars: document.querySelectorAll('.js-plotly-plot g.trace.bars').length,
    headline: (document.getElementById('headline') || {}).innerText || ''});
  document.body.appendChild(p); }, 500));
</script>"""


def chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Rendered:
    probe: dict
    dom: str
    screenshot: Path
    stderr: str


def render(html_file: Path, out_dir: Path, width: int = 1200, height: int = 1400,
           screenshot: bool = True) -> Rendered:
    """Render a probed copy of `html_file`; screenshot to out_dir/screenshot.png."""
    import json

    exe = chromium()
    assert exe is not None
    text = html_file.read_text()
    probed = out_dir / f"probed_{html_file.name}"
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1))
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-extensions", "--virtual-time-budget=15000",
            f"--window-size={width},{height}", f"--user-data-dir={out_dir / 'profile'}"]
    url = probed.resolve().as_uri()
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180)
    shot = out_dir / "screenshot.png"
    if screenshot:
        subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    m = re.search(r'<pre id="__probe">(.*?)</pre>', dom.stdout, re.S)
    import html

    probe = json.loads(html.unescape(m.group(1))) if m else {}
    return Rendered(probe, dom.stdout, shot, dom.stderr)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced PNG (chromium's)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def colour_shares(path: Path, colours: dict[str, tuple[int, int, int]], tol: int = 30,
                  step: int = 4) -> dict[str, float]:
    """Share of pixels within `tol` of each colour (every `step`-th pixel), one decode."""
    width, height, data = png_pixels(path)
    bpp = len(data[0]) // width
    hits = dict.fromkeys(colours, 0)
    total = 0
    for line in data[::step]:
        for x in range(0, width, step):
            px = line[x * bpp:x * bpp + 3]
            total += 1
            for name, rgb in colours.items():
                hits[name] += all(abs(px[k] - rgb[k]) <= tol for k in range(3))
    return {name: h / max(1, total) for name, h in hits.items()}
