"""core/io: strict JSON (no NaN/Infinity), the writable-folder check, whole safetensors files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from trigrecon.core.errors import ConfigError, CorruptWeightsError
from trigrecon.core.io import (
    check_finite,
    check_safetensors,
    check_writable,
    save_tensors,
    to_jsonable,
    write_json,
)


def strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@dataclass
class _Result:
    scores: torch.Tensor
    best: float
    worst: float
    ratios: list[float] = field(default_factory=list)


def test_non_finite_values_become_null_and_parse_strictly(tmp_path):
    res = _Result(torch.tensor([[1.0, float("inf")], [float("-inf"), float("nan")]]),
                  float("inf"), float("-inf"), [float("nan"), 0.5])
    data = {"res": res, "np": np.float32("inf"), "arr": np.array([1.0, np.nan]), "n": np.int64(3)}
    write_json(tmp_path / "r.json", data)
    back = strict_loads((tmp_path / "r.json").read_text())
    assert back == {"res": {"scores": [[1.0, None], [None, None]], "best": None, "worst": None,
                            "ratios": [None, 0.5]}, "np": None, "arr": [1.0, None], "n": 3}
    assert to_jsonable(torch.tensor([1, 2])) == [1, 2]  # integer tensors untouched
    assert to_jsonable(2.5) == 2.5 and to_jsonable(True) is True


def test_check_writable_fails_before_any_work(tmp_path):
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot be written") as err:
        check_writable(blocker / "out")
    assert str(blocker / "out") in str(err.value)


def test_truncated_safetensors_names_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.ones(64, 64)})
    check_safetensors(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CorruptWeightsError, match=r"w\.safetensors is truncated.*100 bytes"):
        check_safetensors(path)
    path.write_bytes(data[:4])
    with pytest.raises(CorruptWeightsError, match="w.safetensors"):
        check_safetensors(path)
    path.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CorruptWeightsError, match="corrupt safetensors header"):
        check_safetensors(path)


def test_check_finite_names_the_tensors():
    w = torch.zeros(3)
    w[1] = float("nan")
    with pytest.raises(CorruptWeightsError, match=r"SAE x has NaN/inf weights: W_dec \(1 values\)"):
        check_finite({"W_dec": w, "W_enc": torch.ones(2)}, "SAE x")
    check_finite({"i": torch.tensor([1, 2])}, "ints")
