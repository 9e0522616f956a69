"""Notebooks: every one is committed executed (outputs kept, no errors) and normalised (quiet
diffs); the fast ones are re-executed here, on a copy in memory (never in place), on the
committed zoo. The slow ones (conjunctive search, self-awareness) are re-executed by
`make notebooks`."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
spec = importlib.util.spec_from_file_location("nb_execute", NOTEBOOKS / "execute.py")
assert spec is not None and spec.loader is not None
nb_execute = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nb_execute)

ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def errors(nb):
    return [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_committed_with_outputs_and_normalised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "not executed: run make notebooks"
    assert any(c.outputs for c in code), "outputs stripped: run make notebooks"
    assert not errors(nb)
    assert nb_execute.is_normalised(path), "volatile metadata: run make notebooks"


def test_fast_notebooks_exist():
    assert set(nb_execute.FAST) <= {p.name for p in ALL}


@pytest.mark.slow
@pytest.mark.parametrize("name", nb_execute.FAST)
def test_fast_notebook_runs(name):
    from trigrecon.organisms.organism import list_organisms

    if not list_organisms():
        pytest.skip("the zoo is not built")
    nb = nb_execute.execute(NOTEBOOKS / name, timeout=600)  # a copy: the file is not written
    assert not errors(nb)
