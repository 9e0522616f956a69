"""Atomic writes and (de)serialisation of result dataclasses: outputs are written whole or not at all."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trigrecon.core.errors import ConfigError, CorruptWeightsError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(path.parent, f".{path.name}.")
    wanted = os.stat(tmp).st_mode & 0o777  # 0o666 minus the umask
    try:
        yield Path(tmp)
        os.chmod(tmp, wanted)  # writers that replace the file themselves (safetensors) make 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _new_file(folder: Path, prefix: str) -> str:
    """Create an empty file with a fresh name in `folder`, mode 0o666 minus the umask (what any
    other file the user writes gets: `mkstemp` would make it 0600, unreadable to colleagues)."""
    for _ in range(100):
        name = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"no free temporary name in {folder}")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh sibling folder of `path`; if the block succeeds, it replaces `path` whole.

    A reader never sees a mix of old and new files (e.g. a new audit.json beside an old report):
    the old folder is renamed aside, the new one renamed in, then the old one is deleted. An
    existing `path` must be a previous result (hold `marker`) or empty: other folders are never
    deleted. Folders get the umask's permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.{secrets.token_hex(6)}.old"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(path: str | Path, marker: str) -> None:
    """Raise ConfigError unless `path` is absent, empty or holds `marker` (a result of ours):
    `atomic_dir` replaces the whole folder, and must never delete a user's other files."""
    from trigrecon.core.errors import ConfigError

    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir())
                          and not (path / marker).exists()):
        raise ConfigError(f"{path} exists and is not a previous result (no {marker}): "
                              "choose another output folder")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tensors, paths and containers -> plain JSON values (tensors become lists).

    Non-finite floats (NaN, +inf, -inf), also inside tensors, become `null`: strict JSON has no
    Infinity/NaN, and every JSON file trigrecon writes parses under a strict parser."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.is_floating_point() or t.is_complex():
            return _finite(t.tolist())
        return t.tolist()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in items]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "dtype") and hasattr(obj, "tolist"):  # numpy scalars and arrays
        return _finite(obj.tolist())
    return obj


def _finite(x: Any) -> Any:
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x if not isinstance(x, float) or math.isfinite(x) else None


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (no NaN/Infinity: see `to_jsonable`), written atomically."""
    write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def config_diff(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """'field: saved X, now Y' for every leaf that differs between two JSON-like records
    (nested dicts give dotted names): what a resumed run reports when its settings changed."""
    saved, now = to_jsonable(saved), to_jsonable(now)
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in saved or k not in now:
                out.append(f"{name}: saved {saved.get(k, '(absent)')!r:.80}, now "
                           f"{now.get(k, '(absent)')!r:.80}")
            else:
                out += config_diff(saved[k], now[k], name)
        return out
    if saved != now:
        return [f"{prefix or 'value'}: saved {saved!r:.80}, now {now!r:.80}"]
    return []


def check_writable(directory: str | Path) -> Path:
    """Create `directory` if needed and prove it can be written (a probe file is created and
    removed), so a run fails before any work instead of after it. Raises ConfigError naming the
    folder and the reason."""
    d = Path(directory).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".trigrecon-write-check.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"output folder {d} cannot be written ({type(e).__name__}: "
                          f"{e.strerror or e}): choose another output folder or fix its "
                          "permissions") from e
    return d


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    check_safetensors(path)
    return load_file(str(path))


def check_safetensors(path: str | Path) -> None:
    """Raise CorruptWeightsError naming `path` unless it is a whole safetensors file: an 8-byte
    header length, a JSON header, and as many data bytes as the header's offsets need (reads
    the header only, so it is cheap for multi-GB shards)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptWeightsError(f"{path} is truncated: {size} bytes, not even the 8-byte "
                                      "safetensors header length. Re-download or rebuild it.")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise CorruptWeightsError(f"{path} is truncated or not a safetensors file: its header "
                                      f"claims {n} bytes but the file has {size}. Re-download "
                                      "or rebuild it.")
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise CorruptWeightsError(f"{path} has a corrupt safetensors header ({e}). "
                                      "Re-download or rebuild it.") from e
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise CorruptWeightsError(f"{path} is truncated: {size} bytes, but its header needs "
                                  f"{need} ({need - size} bytes of tensor data missing). "
                                  "Re-download or rebuild it.")


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise CorruptWeightsError naming every tensor of `what` that holds NaN or inf."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in tensors.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())}
    if bad:
        listed = ", ".join(f"{k} ({n} values)" for k, n in sorted(bad.items()))
        raise CorruptWeightsError(f"{what} has NaN/inf weights: {listed}. Re-download or "
                                  "retrain it; a diverged run saves such weights.")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(folder: str | Path | None) -> str | None:
    """A short content hash of a weights folder's safetensors files (an adapter, an SAE): a
    folder rebuilt at the same path gets a new digest. None for no folder."""
    if folder is None:
        return None
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder} holds no .safetensors weights")
    return hashlib.sha256("".join(f"{f.name}:{file_sha256(f)}" for f in files).encode()).hexdigest()[:16]
