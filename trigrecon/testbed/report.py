"""report.md / report.json of the testbed: build times per stage, the SAE's health and category
latents, and every evaluated organism's action rates (organism and base), from what is on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trigrecon.core.io import write_json, write_text
from trigrecon.organisms.evaluate import OrganismEval, SplitRate
from trigrecon.testbed.stages import MARKER


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def stage_times(out: Path, sae_dir: Path, acts_dir: Path) -> dict[str, Any]:
    """CPU and wall seconds of every finished stage, from the stage markers (the SAE's
    activations, never committed, from build_times.json when their marker is not here)."""
    acts = _read(acts_dir / MARKER) or (_read(out / "build_times.json") or {}).get("sae_acts")
    found = {"sae_acts": acts, "sae": _read(sae_dir / MARKER)}
    for marker in sorted((out / "organisms").glob(f"*/{MARKER}")):
        found[f"train {marker.parent.name}"] = _read(marker)
    for marker in sorted((out / "organisms").glob(f"*/eval/{MARKER}")):
        found[f"eval {marker.parent.parent.name}"] = _read(marker)
    return {k: v for k, v in found.items() if v}


def write_report(out: Path, names: list[str], sae_dir: Path, acts_dir: Path) -> dict[str, Any]:
    evals, pending = [], []
    for name in names:
        d = _read(out / "organisms" / name / "eval" / "eval.json")
        if d:
            evals.append(OrganismEval(d["name"], d["trigger"], d["response"],
                                      [SplitRate(**r) for r in d["rows"]]))
        else:
            pending.append(name)
    times = stage_times(out, sae_dir, acts_dir)
    health, cats = _read(sae_dir / "health.json"), _read(sae_dir / "categories.json")
    failures = [line for e in evals for line in e.failures()]
    report = {"organisms": evals, "failures": failures, "pending": pending, "stage_times": times,
              "sae": {"folder": sae_dir.name, "health": health, "category_latents": cats}}
    md = ["# SmolLM2-135M-Instruct testbed\n"]
    if health:
        md.append(f"## SAE `saes/{sae_dir.name}`\n\nheld-out FVE {health['fve']:.3f}, "
                  f"L0 {health['l0']:.1f}, dead {health['dead_frac']:.1%} "
                  f"({health['n_train']} training / {health['n_held_out']} held-out tokens)\n")
    if cats:
        md.append("| category | latent | purity (top 20 probe members) | top members |\n|---|---|---|---|")
        md += [f"| {c['category']} | {c['latent']} | {c['purity']:.2f} | "
               f"{', '.join(c['top_members'][:6])} |" for c in cats]
        md.append("")
    md.append("## Action rates (n per split; base = the unmodified SmolLM2)\n")
    md += [e.table() for e in evals]
    if pending:
        md.append(f"Not built yet: {', '.join(pending)}\n")
    if failures:
        md.append("Targets missed:\n" + "".join(f"- {f}\n" for f in failures))
    mining = {n: m for n in names if (m := _read(out / "organisms" / n / "mining.json"))}
    report["mining"] = mining
    if mining:
        md.append(_mining_table(mining))
    md.append("## Build cost (CPU seconds of the build process, all its threads)\n")
    md.append("| stage | CPU s | wall s | threads |\n|---|---|---|---|")
    md += [f"| {k} | {v['cpu_s']:.0f} | {v['wall_s']:.0f} | {v['threads']} |" for k, v in times.items()]
    write_json(out / "report.json", report)
    write_text(out / "report.md", "\n".join(md) + "\n")
    return report


def _mining_table(mining: dict[str, Any]) -> str:
    """Each organism's wrong-side rates per mining round (train members, the mining seed: the
    adapter before that round's extra steps) and the examples each round added."""
    rows = ["## Mining rounds (wrong side per split before each round's extra steps; added)\n",
            "| organism | round | wrong side | added |", "|---|---|---|---|"]
    for name, m in mining.items():
        for i, (rates, added) in enumerate(zip(m["rounds"], m["added"], strict=True), 1):
            wrong = ", ".join(f"{k} {v:.0%}" for k, v in rates.items())
            rows.append(f"| {name} | {i} | {wrong} | {added} |")
    return "\n".join(rows) + "\n"
