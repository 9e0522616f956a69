"""Resumable build stages: a stage is skipped when its output holds a `stage.json` whose config
hash matches; outputs are written to a temporary folder and renamed into place when finished.
Each marker records the stage's CPU time (all threads of this process) and wall time."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from trigrecon.core.io import to_jsonable

MARKER = "stage.json"


@dataclass
class StageRecord:
    name: str
    config_hash: str
    cpu_s: float
    wall_s: float
    threads: int
    skipped: bool = False


def config_hash(cfg: Any) -> str:
    data = asdict(cfg) if is_dataclass(cfg) and not isinstance(cfg, type) else cfg
    text = json.dumps(to_jsonable(data), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def done(out: Path, cfg: Any) -> StageRecord | None:
    """The finished stage's record if `out` holds one with this config's hash, else None."""
    try:
        rec = StageRecord(**json.loads((out / MARKER).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return rec if rec.config_hash == config_hash(cfg) else None


def run_stage(name: str, out: Path, cfg: Any, build: Callable[[Path], None], *,
              force: bool = False, log: Callable[[str], None] = print) -> StageRecord:
    """Run `build(tmp_folder)` unless `out` is already done for `cfg`; then move it to `out`."""
    import torch

    if not force and (rec := done(out, cfg)) is not None:
        log(f"[{name}] up to date ({out}), built in {rec.cpu_s:.0f} s CPU")
        return StageRecord(**{**asdict(rec), "skipped": True})
    log(f"[{name}] building -> {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    cpu, wall = time.process_time(), time.time()
    try:
        build(tmp)
        rec = StageRecord(name, config_hash(cfg), time.process_time() - cpu, time.time() - wall,
                          torch.get_num_threads())
        (tmp / MARKER).write_text(json.dumps(asdict(rec), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"[{name}] done in {rec.cpu_s:.0f} s CPU, {rec.wall_s:.0f} s wall")
    return rec
