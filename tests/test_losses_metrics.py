"""Losses and metrics on tiny tensors with hand-computed answers."""

import math

import numpy as np
import pytest
import torch

from logo_train.losses import WeightedCrossEntropy, build_loss, class_weights
from logo_train.metrics import (
    absent_classes,
    classification_metrics,
    confusion,
    per_class_metrics,
)


def test_class_weights_follow_the_formula_and_have_mean_one():
    w = class_weights([100, 25, 10], power=1.0)
    raw = torch.tensor([1.0, 4.0, 10.0])
    assert torch.allclose(w, raw / raw.mean())
    assert w.mean().item() == pytest.approx(1.0)
    assert torch.allclose(class_weights([100, 25, 10], power=0.0), torch.ones(3))
    half = class_weights([100, 25], power=0.5)
    assert half[1] / half[0] == pytest.approx(2.0)
    assert class_weights([10, 0, 5], power=1.0)[1] == 0  # absent class: no weight


def test_weighted_cross_entropy_equals_the_formula():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([0, 1, 1])
    weights = torch.tensor([0.5, 1.5])
    ce = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.e / (1 + math.e)), math.log(2)]
    expected = (0.5 * ce[0] + 1.5 * ce[1] + 1.5 * ce[2]) / 3
    assert WeightedCrossEntropy(weights)(logits, target).item() == pytest.approx(expected)
    assert WeightedCrossEntropy()(logits, target).item() == pytest.approx(sum(ce) / 3)


def test_build_loss_switch():
    assert build_loss("ce", [1, 2], 1.0).weights is None
    assert build_loss("ce_weighted", [10, 5], 1.0).weights.tolist() == pytest.approx([2 / 3, 4 / 3])
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal", [1], 1.0)


def test_metrics_on_a_hand_computed_case():
    # class 0: 3 true, class 1: 1 true, class 2: never true but predicted once
    y_true = [0, 0, 0, 1]
    y_pred = [0, 0, 2, 1]
    m = classification_metrics(y_true=y_true, y_pred=y_pred, num_classes=3)
    assert m["accuracy"] == pytest.approx(0.75)
    # macro over the classes present (0 and 1): precision c0 2/2, c1 1/1; recall c0 2/3, c1 1.
    # The wrong prediction of class 2 costs class 0 its recall, not class 2 a zero.
    assert m["macro_precision"] == pytest.approx(1.0)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1) / 2)
    f1_c0 = 2 * 1 * (2 / 3) / (1 + 2 / 3)
    assert m["macro_f1"] == pytest.approx((f1_c0 + 1) / 2)
    assert m["balanced_accuracy"] == pytest.approx(m["macro_recall"])
    assert absent_classes(y_true, 3) == [2]


def test_a_class_absent_from_the_split_does_not_lower_macro_f1():
    # perfect predictions on a split that has no row of class 3 (of 4)
    y = [0, 1, 1, 2, 2, 2]
    m = classification_metrics(y_true=y, y_pred=y, num_classes=4)
    assert m["macro_f1"] == 1.0 and m["macro_recall"] == 1.0 and m["balanced_accuracy"] == 1.0
    with pytest.raises(ValueError, match="outside 0..3"):
        classification_metrics(y_true=[0, 4], y_pred=[0, 0], num_classes=4)


def test_precision_and_recall_are_not_swapped():
    """A model that predicts class 0 for everything: recall of 0 is 1, precision is its share."""
    y_true = [0, 0, 0, 1]
    y_pred = [0, 0, 0, 0]
    rows = per_class_metrics(y_true=y_true, y_pred=y_pred, class_names=["a", "b"])
    assert rows[0]["recall"] == 1.0
    assert rows[0]["precision"] == pytest.approx(0.75)
    assert rows[1]["support"] == 1 and rows[1]["recall"] == 0.0


def test_confusion_rows_are_true_classes():
    cm = confusion(y_true=[0, 0, 1], y_pred=[1, 0, 1], num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert isinstance(cm, np.ndarray)


def test_generalised_ce_is_the_formula_bounded_and_warms_up_on_weighted_ce():
    from logo_train.losses import GeneralisedCrossEntropy, build_loss, generalised_ce, weighted_ce

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-30.0, 30.0, 0.0]])
    target = torch.tensor([0, 2, 0])
    p = torch.softmax(logits, 1)[torch.arange(3), target]
    weights = torch.tensor([2.0, 1.0, 0.5])
    expected = weights[target] * (1 - p**0.7) / 0.7
    assert torch.allclose(generalised_ce(logits, target, weights, 0.7), expected, atol=1e-6)
    # bounded: a label the model cannot fit costs at most w / q (CE: 60 here)
    assert generalised_ce(logits, target, None, 0.7)[2] <= 1 / 0.7
    assert weighted_ce(logits, target)[2] > 59
    # q -> 0 is cross-entropy
    assert torch.allclose(
        generalised_ce(logits[:2], target[:2], None, 1e-4), weighted_ce(logits[:2], target[:2]),
        rtol=1e-3,
    )  # fmt: skip
    loss = build_loss("gce", [10, 20, 40], 1.0, gce_q=0.7)
    assert isinstance(loss, GeneralisedCrossEntropy) and loss.warms_up
    warm, active = loss(logits, target, active=False), loss(logits, target)
    assert torch.allclose(warm.loss, warm.weighted_ce)  # warm-up: weighted CE
    assert torch.allclose(active.weighted_ce, warm.weighted_ce)  # logged the same way
    assert active.loss < warm.loss
    with pytest.raises(ValueError, match="q must be"):
        GeneralisedCrossEntropy(None, 0.0)


def test_balanced_accuracy_is_sklearns_without_its_warning_for_extra_predicted_classes():
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    from logo_train.metrics import classification_metrics

    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 3, 1, 1, 4, 2]  # 3 and 4: classes of the model that no label has
    with warnings.catch_warnings():
        expected = balanced_accuracy_score(y_true, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y_true=y_true, y_pred=y_pred, num_classes=5)
    assert m["balanced_accuracy"] == pytest.approx(expected) == pytest.approx((0.5 + 2 / 3 + 1) / 3)
