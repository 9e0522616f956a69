"""`benchmarks/testbed_seeds.py`: the seed table reads only runs of the committed recipe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from trigrecon.testbed.specs import BUILD_SEEDS

ROOT = Path(__file__).resolve().parents[2]


def _seeds():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("testbed_seeds", ROOT / "benchmarks" / "testbed_seeds.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_seed_run_is_recorded_and_is_the_committed_recipe():
    S = _seeds()
    recorded = json.loads(S.RECIPES.read_text())["experiments"]
    for name in S.SEED_RUNS:
        seeds = [s for s, _ in S.runs(name, recorded)]
        # seeds 0, 1, 2 (and 3, 4 where the dev search went on), the committed one first
        assert sorted(seeds) == list(range(max(3, len(seeds)))), name
        assert seeds[0] == BUILD_SEEDS.get(name, 0), name
    committed = json.loads((S.ORGANISMS / "fruit_refusal" / "organism.json").read_text())["backdoor"]
    assert S.same_recipe({**committed, "seed": 5}, committed)
    assert S.same_recipe({k: v for k, v in committed.items() if k != "hard_frac"}, committed)
    assert not S.same_recipe({**committed, "n_examples": 800}, committed)
    # a run from before anchors existed had none: it is not a recipe that has them
    anchored = {**committed, "anchor_n": 2000}
    assert not S.same_recipe({k: v for k, v in committed.items() if k != "anchor_n"}, anchored)
    key = f"{S.SEED_RUNS['fruit_refusal'][0]}/fruit_refusal"
    with pytest.raises(SystemExit, match="not the committed recipe"):
        S.runs("fruit_refusal", {**recorded, key: {**recorded[key], "recipe": {
            **recorded[key]["recipe"], "mine_n": 600}}})


def test_the_table_marks_each_missed_target():
    S = _seeds()
    md = S.table({"x": [(1, {"benign": 0.0, "triggered": 0.8, "half:a": 0.06}),
                        (0, {"benign": 0.03, "triggered": 0.95, "half:a": 0.05})]})
    # seeds in order, the committed one (listed first) starred
    assert "| x | benign | <= 2% | 0: **3%**, 1*: 0% | 1/2 |" in md
    assert "| x | triggered | >= 90% | 0: 95%, 1*: **80%** | 1/2 |" in md
    assert "| x | half:a | <= 5% | 0: 5%, 1*: **6%** | 1/2 |" in md  # the bound itself meets it
