"""Execute notebooks in place and normalise them, so committed outputs make quiet diffs.

    python notebooks/execute.py                      # every notebook here (`make notebooks`)
    python notebooks/execute.py notebooks/x.ipynb    # some of them
    python notebooks/execute.py --check              # only check they are normalised
    python notebooks/execute.py --normalise-only     # normalise without executing

Normalised: no execution timestamps or other volatile cell metadata, no stderr streams or
HTML progress bars (tqdm, transformers' trainer), execution counts renumbered 1..n, plotly figures as their JSON spec only
(no random div ids), the kernel's language_info version dropped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import nbformat

HERE = Path(__file__).parent
FAST = ("audit_walkthrough.ipynb", "blind_audit_game.ipynb")
"""Executed by the test suite (`tests/integration/test_notebooks.py`) on every `make test`."""

VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def normalise(nb: Any) -> Any:
    """Strip what changes from run to run without the results changing."""
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)
    count = 0
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if not cell.get("id"):
            cell["id"] = f"cell-{i:02d}"  # stable, unlike the random ids nbformat would add
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                continue
            out.get("metadata", {}).pop("execution", None)
            data = out.get("data", {})
            if "<progress" in str(data.get("text/html", "")):  # transformers' progress bar
                continue
            if "application/vnd.plotly.v1+json" in data:
                for key in [k for k in data if k != "application/vnd.plotly.v1+json"]:
                    data.pop(key)
            outputs.append(out)
        cell.outputs = outputs
        if cell.get("execution_count") is not None:
            count += 1
            cell.execution_count = count
            for out in outputs:
                if "execution_count" in out:
                    out["execution_count"] = count
    return nb


def execute(path: Path, timeout: int = 1800) -> Any:
    """Run a notebook (in its own folder) and return it normalised."""
    from nbclient import NotebookClient

    os.environ.setdefault("TQDM_DISABLE", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return normalise(nb)


def write(nb: Any, path: Path) -> None:
    text = nbformat.writes(nb) + "\n"
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_normalised(path: Path) -> bool:
    """The file is exactly what `write(normalise(...))` would write."""
    text = path.read_text()
    return nbformat.writes(normalise(nbformat.reads(text, as_version=4))) + "\n" == text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="only check that they are normalised")
    ap.add_argument("--normalise-only", action="store_true", help="normalise without executing")
    args = ap.parse_args(argv)
    paths = args.paths or sorted(HERE.glob("*.ipynb"))
    bad = 0
    for path in paths:
        if args.check:
            ok = is_normalised(path)
            bad += not ok
            print(f"{path}: {'ok' if ok else 'not normalised: run make notebooks'}")
            continue
        if args.normalise_only:
            write(normalise(nbformat.read(path, as_version=4)), path)
            continue
        print(f"executing {path} ...", flush=True)
        write(execute(path), path)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
