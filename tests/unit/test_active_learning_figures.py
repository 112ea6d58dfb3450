"""The active-learning figures as the benchmark README shows them: labels to random's
final accuracy (interpolated, None when never reached), the headline rows and the plot."""

from __future__ import annotations

from matplotlib.figure import Figure

from benchmarks.active_learning import ARMS, labels_to_reach, summarise
from benchmarks.report_headline import HEADLINES
from benchmarks.report_plots import PLOTS

LABELS = [1000, 1500, 2000]


def test_labels_to_reach_interpolates_between_rounds():
    assert labels_to_reach(LABELS, [0.70, 0.80, 0.90], 0.85) == 1750.0
    assert labels_to_reach(LABELS, [0.70, 0.80, 0.90], 0.60) == 1000.0
    assert labels_to_reach(LABELS, [0.70, 0.80, 0.84], 0.85) is None


def _section() -> dict:
    # margin gets there first (1,417 labels); entropy never does; random at the end
    seed = {
        "least-confidence": [0.70, 0.78, 0.82],
        "margin": [0.70, 0.82, 0.83],
        "entropy": [0.70, 0.72, 0.75],
        "random": [0.70, 0.76, 0.80],
    }
    other = {k: [a + 0.01 for a in v] for k, v in seed.items()}
    return {"setup": {"seeds": 2}, **summarise(LABELS, [seed, other])}


def test_summary_picks_the_strategy_that_needs_fewest_labels():
    al = _section()
    assert al["random_final_accuracy"] == 0.805
    assert al["best_strategy"] == "margin" and al["ranking"][0] == "margin"
    assert al["arms"]["margin"]["labels_to_random_final"] == 1416.7
    assert al["arms"]["entropy"]["labels_to_random_final"] is None
    assert al["arms"]["random"]["labels_to_random_final"] == 2000.0
    assert al["arms"]["margin"]["final_minus_random_per_seed"] == [0.03, 0.03]
    assert al["best_beats_random_every_seed"] is True


def test_headline_rows_and_plot():
    r = {"active_learning": _section(), "windows": []}
    rows = {row[0]: row for row in HEADLINES["estimate"](r) if "active learning" in row[0]}
    assert len(rows) == 3
    margin = next(row for name, row in rows.items() if "margin" in name)
    assert margin[1] == "< 2000 (met)" and margin[2].startswith("1417")
    entropy = next(row for name, row in rows.items() if "entropy" in name)
    assert entropy[1] == "< 2000 (missed)" and entropy[2].startswith("-")
    fig = Figure()
    assert PLOTS["estimate"](fig, r)
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} >= set(ARMS)
    assert not PLOTS["estimate"](Figure(), {"windows": []})  # an older result: no picture
