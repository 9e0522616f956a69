"""Result files get the umask's permissions, and a run folder is replaced whole."""

import os
import stat

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.core.io import (
    atomic_dir,
    check_replaceable,
    save_tensors,
    write_json,
    write_text,
)


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_the_umask_permissions(tmp_path, umask):
    write_text(tmp_path / "a.txt", "x")
    write_json(tmp_path / "b.json", {"a": 1})
    save_tensors(tmp_path / "c.safetensors", {"t": torch.zeros(2)})
    for name in ("a.txt", "b.json", "c.safetensors"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_run_folders_get_the_umask_permissions(tmp_path, umask):
    with atomic_dir(tmp_path / "run") as d:
        write_text(d / "audit.json", "{}")
    assert mode(tmp_path / "run") == 0o777 & ~umask
    assert mode(tmp_path / "run" / "audit.json") == 0o666 & ~umask


def test_a_run_folder_is_replaced_whole(tmp_path):
    run = tmp_path / "run"
    with atomic_dir(run) as d:
        write_text(d / "audit.json", "old")
        write_text(d / "report.html", "old")
    # A failing write leaves the old run as it was: never a new audit.json beside an old report.
    with pytest.raises(RuntimeError), atomic_dir(run) as d:
        write_text(d / "audit.json", "new")
        raise RuntimeError("report failed")
    assert (run / "audit.json").read_text() == "old" == (run / "report.html").read_text()
    # A run without a report removes the old report with the old audit.json.
    with atomic_dir(run) as d:
        write_text(d / "audit.json", "new")
    assert (run / "audit.json").read_text() == "new"
    assert not (run / "report.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporaries left


def test_only_previous_results_are_replaced(tmp_path):
    check_replaceable(tmp_path / "absent", "audit.json")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "audit.json")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not a previous result"):
        check_replaceable(tmp_path / "mine", "audit.json")
