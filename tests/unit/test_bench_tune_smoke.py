"""tune.py records a reduced run as a smoke run: it used to write ``"smoke": False``
whatever it ran (write_result's default overwrote the flag it computed), so a two-trial
search on five images per class would have been cited as the model-selection figure."""

from __future__ import annotations

import sys

import pytest

from benchmarks.tune import parse_args, reduced


@pytest.mark.parametrize(
    ("argv", "smoke"),
    [
        ([], False),
        (["--timeout", "7200"], False),  # more budget is not less of a run
        (["--epochs", "12"], False),  # nor are more epochs
        (["--smoke"], True),
        (["--trials", "2"], True),
        (["--epochs", "1"], True),
        (["--per-class", "5"], True),
        (["--train-per-class", "200"], True),
        (["--timeout", "60"], True),
        (["--orders", "one"], True),  # one order cannot show what the order does
        (["--dataset", "digits"], False),
        (["--dataset", "digits", "--per-class", "5"], True),
        (["--dataset", "digits", "--epochs", "3"], True),
    ],
)
def test_a_reduced_search_is_a_smoke_run(monkeypatch, argv, smoke):
    monkeypatch.setattr(sys, "argv", ["tune.py", *argv])
    args, overrides = parse_args()
    assert reduced(args) is smoke
    if "--smoke" in argv:  # small, and the gate only has to run
        assert (args.trials, args.epochs, args.per_class, args.orders) == (2, 1, 5, "one")
        assert overrides["gate.min_accuracy"] == 0.0
