"""benchmarks/audit_dynamics.py's analysis: per-epoch detection and the epoch-averaged audit."""

import numpy as np
import pytest

from benchmarks.audit_dynamics import analyse

NAMES = ["a", "b", "c"]


def _row(p_given: float, given: int, other: int) -> list[float]:
    row = [0.0, 0.0, 0.0]
    row[given] = p_given
    row[other] = 1.0 - p_given
    return row


def test_an_epoch_averaged_audit_finds_a_flip_the_last_epoch_memorised():
    given = np.array([0, 0, 1, 1, 2, 2])
    truth = np.array([0, 0, 1, 0, 2, 2])  # row 3: a flip (truly class 0, labelled 1)
    clean = [_row(0.95, 0, 1), _row(0.85, 0, 2), _row(0.95, 1, 2), None, _row(0.95, 2, 0)]
    clean.append(_row(0.95, 2, 1))
    epochs = []
    for p_flip_label in (0.05, 0.05, 0.9):  # learnt late: right twice, then memorised
        rows = [r if r is not None else _row(p_flip_label, 1, 0) for r in clean]
        epochs.append(rows)
    result = analyse(np.asarray(epochs), given, truth, NAMES, start=1)

    assert result["flipped"] == 1
    assert [e["flipped_predicted_true"] for e in result["epochs"]] == [1.0, 1.0, 0.0]
    assert result["epochs"][0]["auroc"] == 1.0
    # last epoch: the flip's label has p 0.9, above one right label's 0.85
    last = result["last epoch"]
    assert last["auroc"] == pytest.approx(0.8)
    assert last["p(label) < 0.1 (the default)"] == {
        "acted_on": 0,
        "really_wrong": 0,
        "wrong_left": 1,
    }
    # mean of epochs 1-3: p(label) 0.33 (not < 0.1), but the averaged prediction is class 0
    averaged = result["mean of epochs 1-3"]
    assert averaged["auroc"] == 1.0
    assert averaged["p(label) < 0.1 (the default)"]["acted_on"] == 0
    assert averaged["the model predicts another class"] == {
        "acted_on": 1,
        "really_wrong": 1,
        "wrong_left": 0,  # relabelled to the true class (averaged p 0.63 >= 0.5)
    }
