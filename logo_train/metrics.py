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
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)


def classification_metrics(
    *, y_true: Sequence[int], y_pred: Sequence[int], num_classes: int
) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro precision / recall / F1 over ``num_classes``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.arange(num_classes)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true=y_true, y_pred=y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true=y_true, y_pred=y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true=y_true, y_pred=y_pred)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }


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
