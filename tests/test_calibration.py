"""Temperature scaling, calibration error, the open-set threshold and risk-coverage, on
hand-made logits whose right answers are known."""

import numpy as np
import pytest

from logo_train.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    open_set_answer,
    open_set_threshold,
    reliability,
    risk_coverage,
    softmax,
)


def overconfident(n=4000, classes=5, seed=0):
    """Logits whose softmax at T=1 is too sure: drawn from a calibrated model at T=3, then
    multiplied by 3."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, (n, classes))
    probs = softmax(true_logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return true_logits * 3.0, labels


def test_temperature_scaling_recovers_the_temperature_and_lowers_the_error():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert before > 0.15 and after < 0.03
    # temperature never changes a prediction
    assert (softmax(logits).argmax(1) == softmax(logits, t).argmax(1)).all()


def test_calibration_error_of_a_hand_computed_case():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # two bins' worth: 0.9 (accuracy 0.5, gap 0.4) and 0.6 (accuracy 1.0, gap 0.4)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.4)
    r = reliability(probs, labels, bins=10)
    assert sum(r["count"]) == 4 and r["count"][8] == 2 and r["count"][5] == 2
    assert r["accuracy"][8] == 0.5 and r["confidence"][5] == pytest.approx(0.6)


def test_the_threshold_keeps_the_asked_share_of_right_answers():
    logits, labels = overconfident(seed=1)
    probs = softmax(logits, fit_temperature(logits, labels))
    threshold = open_set_threshold(probs, labels, keep=0.95)
    right = probs.argmax(1) == labels
    kept = probs.max(1)[right] >= threshold
    assert kept.mean() == pytest.approx(0.95, abs=0.005)
    with pytest.raises(ValueError, match="keep"):
        open_set_threshold(probs, labels, keep=0)


def test_open_set_answer_rejects_unsure_and_unknown_answers():
    probs = np.array([[0.8, 0.1, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    assert open_set_answer(probs, 0.5, unknown=None).tolist() == [0, -1, 2]
    assert open_set_answer(probs, 0.5, unknown=2).tolist() == [0, -1, -1]
    assert open_set_answer(probs, 0.0, unknown=None).tolist() == [0, 0, 2]


def test_risk_coverage_rises_as_unsure_answers_go():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 0])
    rc = risk_coverage(probs, labels)
    assert rc["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert rc["accuracy"] == pytest.approx([1.0, 1.0, 2 / 3, 0.75])
    assert rc["threshold"] == [0.9, 0.8, 0.6, 0.55]


def test_a_split_with_no_wrong_answer_keeps_the_logits_as_trained():
    logits, labels = overconfident(n=500)
    right = logits.argmax(1)
    assert fit_temperature(logits, right) == 1.0  # no minimum: T would run to 0
    assert fit_temperature(logits, labels) != 1.0


def test_the_threshold_ignores_the_unknown_class_and_is_capped():
    # class 2 is 'unknown': its right answers (rejected anyway) do not set the threshold
    probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.05, 0.05, 0.9], [0.1, 0.1, 0.8]])
    labels = np.array([0, 0, 2, 2])
    assert open_set_threshold(probs, labels, keep=0.5, unknown=2) == 0.7
    assert open_set_threshold(probs, labels, keep=0.5) == 0.8
    # a near-perfect split gives a threshold of ~1: the cap stops it
    sure = np.array([[0.999, 0.001], [0.9995, 0.0005]])
    assert open_set_threshold(sure, np.array([0, 0]), keep=0.95) == 0.999
    assert open_set_threshold(sure, np.array([0, 0]), keep=0.95, maximum=0.9) == 0.9


def test_calibrate_fits_the_threshold_on_the_shifted_images_when_given():
    """The temperature comes from validation, the threshold from the shifted views: less sure
    images give a lower threshold, and the fit says what it used."""
    logits, labels = overconfident(n=2000, seed=2)
    t = fit_temperature(logits, labels)
    plain = calibrate(logits, labels, logits, labels, unknown=None, maximum=1.0)
    assert plain["fitted_on"] == "validation" and plain["temperature"] == pytest.approx(t)
    shifted = calibrate(
        logits, labels, logits, labels, unknown=None, maximum=1.0,
        shifted_logits=logits * 0.5, shifted_labels=labels,
    )  # fmt: skip
    assert shifted["fitted_on"] == "shifted validation"
    assert shifted["temperature"] == pytest.approx(t)
    assert shifted["min_confidence"] < plain["min_confidence"]
    probs = softmax(logits * 0.5, t)
    assert shifted["min_confidence"] == open_set_threshold(probs, labels, 0.95)
    assert shifted["fit"]["images"] == len(labels)
    capped = calibrate(logits, labels, logits, labels, unknown=None, maximum=0.3)
    assert capped["min_confidence"] == 0.3 and capped["uncapped"] > 0.3
