"""Benchmark: buffer replay on vs off in the self-awareness GRPO stage (issue 4 ablation).

For each mode the finished reversal-SFT stage of a pipeline out dir (`--from`, e.g. the out dir
of `trigrecon selfaware`) is copied into `<work>/<organism>_replay_<mode>/`, so only GRPO runs,
with the default `SelfAwareConfig` except `grpo.buffer.enabled`. The figure is the first step at
which the 5-step moving average of the elicitation hit rate reaches 50% (`steps_to_50`, None:
never), plus the mean hit rate over the last 10 steps. With `--reuse`, a mode whose GRPO run
already exists under `--from` with the same setting (the pipeline's own run: replay on) is read
from there instead of retrained. Same seed in both modes; the only difference is the replay.

    python benchmarks/bench_replay.py --organism fruit_refusal --from OUT_DIR --work WORK \
        [--modes on off] [--reuse] [--steps N] [--out benchmarks/results/replay_fruit_refusal.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from trigrecon.organisms.awareness import task_from_organism
from trigrecon.selfaware.metrics import TrainingCurves
from trigrecon.selfaware.pipeline import SelfAwareConfig, _stage_grpo, _stage_sft, make_reward


def summary(curves: TrainingCurves, wall_s: float | None, source: str) -> dict[str, Any]:
    return {
        "steps_to_50": curves.steps_to(0.5),
        "steps_to_50_work": curves.steps_to(0.5, key="work_rate"),
        "final_hit_rate_last10": curves.final_rate(),
        "n_steps": len(curves.steps),
        "wall_s": wall_s,
        "source": source,
    }


def run_mode(
    organism: str, src: Path, work: Path, enabled: bool, reuse: bool, steps: int | None
) -> dict[str, Any]:
    from trigrecon.organisms.organism import load_organism

    cfg = SelfAwareConfig(plots=False)
    grpo = replace(cfg.grpo, buffer=replace(cfg.grpo.buffer, enabled=enabled))
    if steps is not None:
        grpo = replace(grpo, steps=steps)
    cfg = replace(cfg, grpo=grpo)
    have = src / "grpo" / "curves.json"
    if reuse and have.exists():
        c = TrainingCurves.load(have)
        conf = c.config or {}
        if conf.get("buffer", {}).get("enabled") == enabled and conf.get("steps") == grpo.steps:
            return summary(c, None, str(have))
    out = work / f"{organism}_replay_{'on' if enabled else 'off'}"
    if not (out / "sft" / "reversal_sft.json").exists():
        shutil.copytree(src / "sft", out / "sft", dirs_exist_ok=True)
    task = task_from_organism(
        load_organism(organism), n_reward=cfg.n_reward_prompts, n_eval=cfg.n_eval
    )
    reward, _, tok = make_reward(task, cfg)
    timings: dict[str, float] = {}
    policy, _ = _stage_sft(task, cfg, out, timings)
    _, curves, _ = _stage_grpo(task, cfg, out, reward, policy, tok, timings)
    return summary(curves, timings.get("grpo"), str(out / "grpo" / "curves.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organism", required=True, help="zoo name (fruit_refusal, snow_fruit, ...)")
    ap.add_argument("--from", dest="src", required=True, type=Path, help="pipeline out dir")
    ap.add_argument("--work", required=True, type=Path, help="where the new runs go")
    ap.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--reuse", action="store_true", help="read a matching run from --from")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps (default: the default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not (a.src / "sft" / "reversal_sft.json").exists():
        ap.error(f"{a.src} has no finished reversal-SFT stage (sft/reversal_sft.json)")
    res: dict[str, Any] = {
        "organism": a.organism,
        "from": str(a.src),
        "machine": platform.platform(),
        "threads": a.threads,
        "modes": {},
    }
    out = a.out or Path(f"benchmarks/results/replay_{a.organism}.json")
    for mode in a.modes:
        t0 = time.time()
        res["modes"][mode] = run_mode(a.organism, a.src, a.work, mode == "on", a.reuse, a.steps)
        print(mode, json.dumps(res["modes"][mode]), f"({time.time() - t0:.0f} s)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
    m = res["modes"]
    if "on" in m and "off" in m:
        on, off = m["on"]["steps_to_50"], m["off"]["steps_to_50"]
        # None: one mode never reached 50%, or both were there from the start (nothing to speed up)
        res["speedup_steps"] = None if not on or off is None else off / on
        out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
