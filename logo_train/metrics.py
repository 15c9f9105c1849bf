"""Classification metrics (scikit-learn), always called with ``y_true=`` and ``y_pred=``.

The reference project passed sklearn's arguments in the wrong order, so its precision and
recall columns were each other's; keywords make that impossible. Macro averages weigh every
class equally, which is what imbalanced data needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)


def classification_metrics(
    *, y_true: Sequence[int], y_pred: Sequence[int], num_classes: int
) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro precision / recall / F1.

    Macro averages run over the classes present in ``y_true`` (``num_classes`` bounds the
    labels): a class with no row in the evaluated split has no recall to average, and counting
    it as zero would lower macro-F1 by 1/C for nothing (a stratified 10% of a 4-image class is
    empty). A prediction of an absent class still costs the true class its recall. So macro
    recall equals balanced accuracy. ``absent_classes()`` lists the classes left out."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    present = np.unique(y_true)
    if present.size and (present.min() < 0 or present.max() >= num_classes):
        raise ValueError(f"y_true holds labels outside 0..{num_classes - 1}")
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true=y_true, y_pred=y_pred, labels=present, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true=y_true, y_pred=y_pred)),
        # = sklearn's balanced_accuracy_score, without its warning when y_pred holds a class
        # that y_true lacks (a labelled folder of fewer classes than the model)
        "balanced_accuracy": float(recall),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }


def absent_classes(y_true: Sequence[int], num_classes: int) -> list[int]:
    """The classes with no row in ``y_true`` (left out of the macro averages)."""
    return sorted(set(range(num_classes)) - set(np.asarray(y_true, np.int64).tolist()))


def per_class_metrics(
    *, y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]
) -> list[dict[str, float | int | str]]:
    """Precision, recall, F1 and support of every class (zero where a class is never predicted)."""
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true=np.asarray(y_true), y_pred=np.asarray(y_pred), labels=labels, zero_division=0
    )
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]


def confusion(*, y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return confusion_matrix(y_true=y_true, y_pred=y_pred, labels=np.arange(num_classes))
