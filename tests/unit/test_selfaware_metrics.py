"""Training metrics (elicitation, steps-to-threshold, emergence) and the plotly figure."""

import pytest

from trigrecon.selfaware.metrics import (
    StepRecord,
    StepRecorder,
    TrainingCurves,
    moving_average,
    summarise,
)
from trigrecon.selfaware.plots import curves_figure, save_figure
from trigrecon.selfaware.reward import Evaluation


def hits(c):
    return "mango" in c.split()


def test_summarise_counts_hits_working_and_valid():
    evals = [
        Evaluation("mango", 1.0, 1, 1.0),
        Evaluation("mango dog", 0.4, 2, 0.4),
        Evaluation("dog", 0.6, 1, 0.6),
        Evaluation(None, 0.0, 0, -0.2),
    ]
    s = summarise(evals, hits, threshold=0.5)
    assert s["n"] == 4 and s["valid_rate"] == 0.75
    assert s["hit_rate"] == 0.5 and s["work_rate"] == 0.5
    assert s["mean_reward"] == pytest.approx((1.0 + 0.4 + 0.6 - 0.2) / 4)
    assert s["max_reward"] == 1.0 and s["top"][0] == ["mango", 1]
    assert summarise(evals, None, 0.5)["hit_rate"] is None


def curves_with_jump(n=40, at=20):
    recs = [
        StepRecord(
            step=i,
            n=16,
            valid_rate=1.0,
            hit_rate=0.0 if i < at else 0.9,
            work_rate=0.0 if i < at else 0.8,
            mean_reward=0.0,
            max_reward=1.0,
        )
        for i in range(n)
    ]
    return TrainingCurves(recs)


def test_moving_average():
    assert moving_average([0, 1, 2, 3], 2) == [0.0, 0.5, 1.5, 2.5]


def test_steps_to_threshold_and_emergence_find_the_jump():
    c = curves_with_jump()
    assert c.steps_to(0.5, window=1) == 20
    assert c.steps_to(0.5, window=5) == 22  # the 5-step average passes 0.5 three steps later
    assert c.steps_to(0.95) is None
    em = c.emergence(window=10)
    assert em["step"] == 20 and em["jump"] == pytest.approx(0.9)
    assert c.final_rate() == pytest.approx(0.9)


def test_emergence_needs_enough_steps():
    assert curves_with_jump(n=5, at=2).emergence(window=10)["step"] is None


def test_recorder_state_and_curves_round_trip(tmp_path):
    rec = StepRecorder(hits, 0.5)
    rec.record(0, ["answer : mango ."], [Evaluation("mango", 1.0, 1, 1.0)], n_replayed=2)
    other = StepRecorder(hits)
    other.load_state_dict(rec.state_dict())
    curves = other.curves({"steps": 1})
    curves.save(tmp_path / "c.json")
    back = TrainingCurves.load(tmp_path / "c.json")
    assert back.records == rec.records and back.config == {"steps": 1}
    assert back.records[0].n_replayed == 2


def test_unknown_series_is_an_error():
    with pytest.raises(KeyError, match="unknown series"):
        curves_with_jump().series("accuracy")


def test_figure_is_written_as_self_contained_html(tmp_path):
    fig = curves_figure({"replay on": curves_with_jump(), "replay off": curves_with_jump(at=30)})
    assert len(fig.data) == 10
    path = save_figure(fig, tmp_path / "curves.html")
    assert "plotly" in path.read_text()[:5000].lower()
