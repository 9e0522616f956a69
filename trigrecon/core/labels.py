"""Latent labels in Neuronpedia's explanation-export format.

An export is a JSON array of objects `{id, modelId, layer, index, description, typeName,
explanationModelName}`, where `layer` is the SAE's source id ("8-llamascope-res-131k") and
`index` is the latent index as a string. Exports come as one file, a folder of per-layer files,
or a zip of per-layer files (Llama Scope). The project's own organisms' label files use the same
format, written by `save_labels`.
"""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens import SAE

from trigrecon.core.errors import ConfigError, IncompatibleSAEError, WeightsNotFoundError
from trigrecon.core.io import write_text

_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


@dataclass
class LatentLabels:
    """Descriptions of an SAE's latents. Unlabelled latents are normal: `.get` returns ""."""

    descriptions: dict[int, str]
    source: str = ""
    """Neuronpedia source id of the SAE, e.g. "8-llamascope-res-131k"."""
    model_id: str = ""
    """Neuronpedia model id, e.g. "llama3.1-8b"."""
    explanation_model: str = ""
    type_name: str = ""

    def get(self, index: int) -> str:
        return self.descriptions.get(int(index), "")

    def top(self, indices: Iterable[int]) -> list[tuple[int, str]]:
        """(index, description) for each index, in the given order (e.g. a ranking)."""
        return [(int(i), self.get(int(i))) for i in indices]

    def __len__(self) -> int:
        return len(self.descriptions)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and index in self.descriptions

    @property
    def neuronpedia_id(self) -> str:
        return f"{self.model_id}/{self.source}"


def split_neuronpedia_id(np_id: str) -> tuple[str, str]:
    """Split a Neuronpedia id: "llama3.1-8b/8-llamascope-res-131k" -> (model id, source id)."""
    model_id, _, source = np_id.partition("/")
    if not source:
        raise ConfigError(f"neuronpedia id {np_id!r} must look like 'model/source'")
    return model_id, source


# ---------------------------------------------------------------- reading


def load_labels(path: str | Path, sae: SAE | None = None) -> LatentLabels:
    """Read a Neuronpedia export: one file, a folder of per-layer files or a zip of them.

    With `sae` (whose metadata has a `neuronpedia_id`), only entries of its source (layer) are
    kept, and labels made for another SAE (no entry for its layer, another model id, or an
    index >= d_sae) raise IncompatibleSAEError.
    Several descriptions of one latent: the first is kept."""
    path = Path(path)
    want = _sae_source(sae)
    if path.is_file() and path.suffix == ".zip":
        entries = list(_read_zip(path, want))
    elif path.is_dir():
        entries = list(_read_folder(path, want))
    elif path.is_file():
        entries = _parse(path.name, _read_bytes(path))
    else:
        raise WeightsNotFoundError(f"no label file at {path}: pass a Neuronpedia export "
                                   "(.json file, folder of per-layer files, or .zip)")
    if want is not None:
        entries = _select_layer(entries, want, path)
    return _build(entries, path, sae, want)


def check_labels(labels: Any, sae: SAE) -> None:
    """Raise IncompatibleSAEError unless `labels` (a LatentLabels) can describe `sae`: the same
    Neuronpedia model/source where both record one, and no latent index >= d_sae. Every use of
    labels with an SAE goes through this (the audit calls it), also for labels loaded without
    `sae=`."""
    if not isinstance(labels, LatentLabels):
        return  # a duck-typed labeller: nothing recorded to check
    want = _sae_source(sae)
    have = (labels.model_id, labels.source)
    if want is not None and all(have) and have != want:
        raise IncompatibleSAEError(
            f"labels are for {labels.neuronpedia_id} but the SAE is {'/'.join(want)}: "
            "use the label export made for this SAE.")
    d_sae = int(sae.cfg.d_sae)
    beyond = sorted(i for i in labels.descriptions if i >= d_sae)
    if beyond:
        raise IncompatibleSAEError(
            f"labels ({labels.neuronpedia_id or 'no source'}) describe latent {beyond[0]} but the "
            f"SAE has d_sae={d_sae} latents: the label file was made for another (wider) SAE.")


def _sae_source(sae: SAE | None) -> tuple[str, str] | None:
    np_id = sae.cfg.metadata.neuronpedia_id if sae is not None else None
    return split_neuronpedia_id(str(np_id)) if np_id else None


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _parse(name: str, data: bytes, member: bool = False) -> list[dict[str, Any]]:
    """Explanation objects of one file (a JSON array, or JSON lines); a folder/zip `member`
    holding a JSON object (e.g. an SAE's cfg.json next to its labels) yields nothing."""
    text = data.decode("utf-8").strip()
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        try:  # JSON lines: one explanation object per line
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ConfigError(f"label file {name} is not valid JSON: {e}") from e
        if len(rows) < 2:
            raise ConfigError(f"label file {name} is not valid JSON: {e}") from e
    if member and isinstance(rows, dict):
        return []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"label file {name} must hold a JSON array of explanation objects")
    return rows


def _name_matches(name: str, source: str) -> bool:
    """Does a file name mention this source id (so "8-..." does not match "18-...")?"""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(source)}(?![0-9A-Za-z])", name) is not None


def _pick(names: list[str], want: tuple[str, str] | None) -> list[str]:
    """Label files to read: those named after the wanted source if any, else all."""
    names = [n for n in names if n.endswith(_SUFFIXES) and not Path(n).name.startswith(".")]
    named = [n for n in names if want is not None and _name_matches(Path(n).name, want[1])]
    return named or names


def _read_folder(path: Path, want: tuple[str, str] | None) -> Iterator[dict[str, Any]]:
    files = {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file()}
    for name in _pick(list(files), want):
        yield from _parse(name, _read_bytes(files[name]), member=True)


def _read_zip(path: Path, want: tuple[str, str] | None) -> Iterator[dict[str, Any]]:
    with zipfile.ZipFile(path) as zf:
        for name in _pick(sorted(zf.namelist()), want):
            data = zf.read(name)
            yield from _parse(name, gzip.decompress(data) if name.endswith(".gz") else data, True)


def _select_layer(entries: list[dict[str, Any]], want: tuple[str, str], path: Path) -> list[dict]:
    kept = [e for e in entries if str(e.get("layer")) == want[1]]
    if entries and not kept:
        found = sorted({str(e.get("layer")) for e in entries})
        raise IncompatibleSAEError(
            f"{path} has no labels for the SAE's source {'/'.join(want)} (found layers "
            f"{found[:8]}): use the label export made for this SAE."
        )
    return kept


def _build(
    entries: list[dict[str, Any]], path: Path, sae: SAE | None, want: tuple[str, str] | None
) -> LatentLabels:
    pairs = {(str(e.get("modelId", "")), str(e.get("layer", ""))) for e in entries}
    if want is not None and pairs - {want}:
        bad = sorted(f"{m}/{s}" for m, s in pairs - {want})
        raise IncompatibleSAEError(
            f"{path} labels {bad[:4]} but the SAE is {'/'.join(want)}: use the labels of this SAE."
        )
    if want is None and len(pairs) > 1:
        raise ConfigError(f"{path} mixes labels of several SAEs {sorted(pairs)[:4]}: pass sae= "
                          "to pick one, or a single per-layer file.")
    d_sae = sae.cfg.d_sae if sae is not None else None
    descriptions: dict[int, str] = {}
    for e in entries:
        i = _index(e, path)
        if d_sae is not None and i >= d_sae:
            raise IncompatibleSAEError(
                f"{path} labels latent {i} but the SAE has d_sae={d_sae} latents "
                f"({(sae.cfg.metadata.neuronpedia_id if sae is not None else None) or 'SAE'}): "
                "the label file was made for another (wider) SAE."
            )
        descriptions.setdefault(i, str(e.get("description") or "").strip())
    model_id, source = next(iter(pairs)) if pairs else (want or ("", ""))
    first = entries[0] if entries else {}
    return LatentLabels(descriptions, source, model_id,
                        str(first.get("explanationModelName", "")), str(first.get("typeName", "")))


def _index(entry: dict[str, Any], path: Path) -> int:
    try:
        i = int(str(entry["index"]))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{path}: entry {str(entry)[:80]} has no integer 'index'") from e
    if i < 0:
        raise ConfigError(f"{path}: negative latent index {i}")
    return i


# ---------------------------------------------------------------- writing


def save_labels(path: str | Path, labels: LatentLabels) -> None:
    """Write `labels` as a Neuronpedia explanation export (one JSON array), atomically."""
    rows = [
        {
            "id": f"{labels.model_id}/{labels.source}/{i}",
            "modelId": labels.model_id,
            "layer": labels.source,
            "index": str(i),
            "description": text,
            "typeName": labels.type_name,
            "explanationModelName": labels.explanation_model,
        }
        for i, text in sorted(labels.descriptions.items())
        if text
    ]
    write_text(path, json.dumps(rows, indent=1) + "\n")

