"""Resumable stages that notice changed settings (used by the audit and `run_selfaware`).

A stage keeps a `stage.json` in its folder: its *record* (its config, digests of the inputs it
reads, the records of the stages it builds on) and whether it finished. On a rerun a finished
stage with the same record is reused; a stage whose record differs raises StaleStageError naming
the differing fields, unless `overwrite=True`, which deletes that stage's folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from trigrecon.core.errors import ConfigError
from trigrecon.core.io import config_diff, to_jsonable, write_json

STAGE_FILE = "stage.json"


class StaleStageError(ConfigError):
    """A saved stage was produced with other settings or inputs than the current run's."""


def digest(obj: Any) -> str:
    """A short, stable hash of a JSON-able value (prompt lists, splits)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_stage(folder: Path, name: str, record: dict[str, Any], overwrite: bool) -> bool:
    """Prepare `folder` for stage `name`; True when its finished result can be reused as is."""
    path = folder / STAGE_FILE
    record = to_jsonable(record)
    diff: list[str] = []
    if path.exists():
        saved = json.loads(path.read_text())
        diff = config_diff(saved.get("record"), record)
        if not diff:
            return bool(saved.get("done"))
    elif folder.exists() and any(folder.iterdir()):
        diff = [f"no {STAGE_FILE}: the folder holds results whose settings are unknown"]
    if diff:
        if not overwrite:
            shown = "; ".join(diff[:10]) + (f"; ... ({len(diff)} in all)" if len(diff) > 10 else "")
            raise StaleStageError(
                f"stage {name!r} in {folder} was run with other settings or inputs ({shown}). "
                "Rerun with overwrite=True (CLI: --force) to redo it and every later stage, or "
                "use another output folder.")
        shutil.rmtree(folder)
    write_json(path, {"record": record, "done": False})
    return False


def close_stage(folder: Path, record: dict[str, Any]) -> None:
    """Mark the stage finished (written after all its outputs)."""
    write_json(folder / STAGE_FILE, {"record": to_jsonable(record), "done": True})
