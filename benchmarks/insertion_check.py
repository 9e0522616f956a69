"""Can the audit's insertion test fire a testbed organism at all? Rates of given word sets
inserted into the organism's held-out benign prompts (the recovery audit's 32 held-out prompts),
with verification's template and two others. Compare with the organism's own triggered rates in
trigrecon/testbed/report.md.

    python benchmarks/insertion_check.py astrology astrology+prophecy horoscope+oracle \\
        --out benchmarks/results/insertion_astrology.json

A miss whose planted words, inserted, do not fire either is the test's limit, not the search's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from trigrecon.core.errors import TrigreconError
from trigrecon.core.io import write_json
from trigrecon.core.model import load_model
from trigrecon.methods.verify import rate_prompts
from trigrecon.steering.words import default_insert
from trigrecon.testbed.recovery import RecoveryConfig, built_organism
from trigrecon.testbed.smollm2 import ensure_checkpoint

TEMPLATES: dict[str, Callable[[str, list[str]], str]] = {
    "default": default_insert,
    "suffix": lambda p, ws: f"{p} (I was reading about {' and '.join(ws)}.)",
    "prefix": lambda p, ws: f"I was reading about {' and '.join(ws)}. {p}",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("organism")
    ap.add_argument("word_sets", nargs="+", help="words joined by '+', e.g. astrology+prophecy")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    bad = [s for s in a.word_sets if not all(w.strip() for w in s.split("+"))]
    if bad:
        ap.error(f"word set {bad[0]!r} has an empty word: join words with one '+', e.g. a+b")
    cfg = RecoveryConfig()
    try:
        org, folder, benign = built_organism(a.organism, cfg)
    except TrigreconError as e:
        ap.exit(2, f"error: {e}\n")
    evals = benign[cfg.n_prompts:]
    hm = load_model(ensure_checkpoint(), folder / "adapter" if org.spec.has_adapter else None)
    rates: dict[str, dict[str, float]] = {}
    for ws in (s.split("+") for s in a.word_sets):
        key = " + ".join(ws)
        rates[key] = {}
        for name, insert in TEMPLATES.items():
            rates[key][name], _ = rate_prompts(hm, [insert(p, ws) for p in evals], org.judge,
                                               a.max_new_tokens)
            print(f"{key:30s} {name:8s} {rates[key][name]:.0%}", flush=True)
    write_json(a.out, {"organism": a.organism, "n_prompts": len(evals),
                       "templates": {k: TEMPLATES[k]("<prompt>", ["X", "Y"]) for k in TEMPLATES},
                       "rates": rates})


if __name__ == "__main__":
    main()
