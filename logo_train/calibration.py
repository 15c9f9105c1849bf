"""Calibration and the open-set answer, as pure functions of logits and labels.

* **Temperature scaling** (Guo et al. 2017): one scalar ``T`` fitted on the validation split's
  logits by minimising the negative log-likelihood; ``softmax(logits / T)`` keeps every
  prediction and makes the probabilities honest.
* **Expected calibration error** and the reliability diagram's bins (equal-width confidence
  bins, the gap between accuracy and confidence weighted by the share of images in each).
* **The open-set threshold**: an answer whose (calibrated) top probability is below it is
  ``unknown`` — "none of the classes I know". Chosen to keep a set share of the right answers
  (``keep``, 0.95) on *shifted* validation images (the validation split seen through the
  training augmentation at a high strength, ``evaluate.fit_open_set``): a threshold fitted on
  the plain validation split, where the model is at home, rejects right answers as soon as
  the photos differ (0.673-0.775 on renders and 8-11% of right real answers lost; 0.999 for a
  model trained on a user's photos). A cap (``maximum``) guards against a degenerate fit.
* **Risk–coverage**: the accuracy of the answers kept against the share kept, as the threshold
  rises.

The model itself is unchanged: the temperature and threshold travel in ``model.json`` and are
applied by ``logo-train predict`` (``logo_train.predict``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_KEEP = 0.95
"""Share of the validation split's right answers the open-set threshold keeps."""


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T > 0`` that minimises the NLL of ``softmax(logits / T)`` on ``labels`` (LBFGS on
    ``log T``, from T = 1). Raises on an empty split. When every answer is right there is no
    minimum (the NLL falls as ``T`` goes to 0, towards a model that is never unsure): 1 is
    returned, the logits as trained."""
    if len(labels) == 0:
        raise ValueError("temperature scaling needs at least one labelled image")
    if (np.asarray(logits).argmax(1) == np.asarray(labels)).all():
        return 1.0
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, list]:
    """Per equal-width confidence bin: its edges, image count, mean confidence, accuracy."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count, conf, acc = [], [], []
    for b in range(bins):
        rows = which == b
        count.append(int(rows.sum()))
        conf.append(float(confidence[rows].mean()) if rows.any() else float("nan"))
        acc.append(float(correct[rows].mean()) if rows.any() else float("nan"))
    return {"edges": edges.tolist(), "count": count, "confidence": conf, "accuracy": acc}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """sum over bins of (images in bin / images) x |accuracy - mean confidence|."""
    r = reliability(probs, labels, bins)
    n = sum(r["count"])
    if n == 0:
        raise ValueError("the expected calibration error needs at least one image")
    return float(
        sum(
            c / n * abs(a - f)
            for c, a, f in zip(r["count"], r["accuracy"], r["confidence"], strict=True)
            if c
        )
    )


DEFAULT_MAX_THRESHOLD = 0.55
"""The open-set threshold's cap: above it a fit is degenerate (a validation split the model
answers with certainty), and would call most photos from elsewhere ``unknown``."""


def open_set_threshold(
    probs: np.ndarray,
    labels: np.ndarray,
    keep: float = DEFAULT_KEEP,
    *,
    unknown: int | None = None,
    maximum: float = 1.0,
) -> float:
    """The largest top-probability threshold that keeps ``keep`` of the right answers of the
    known classes (not ``unknown``, which the answer rejects anyway): the ``1 - keep``
    quantile of their top probability, at most ``maximum`` (0 when none is right)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep = {keep}: expected 0 < keep <= 1")
    probs, labels = np.asarray(probs), np.asarray(labels)
    right = probs.argmax(axis=1) == labels
    if unknown is not None:
        right &= labels != unknown
    if not right.any():
        return 0.0
    fitted = float(np.quantile(probs.max(axis=1)[right], 1.0 - keep, method="lower"))
    return min(fitted, maximum)


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Answers sorted by confidence, most sure first: for each k, the share answered (k / n)
    and the accuracy of those k answers, and the threshold that keeps them."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    correct = (probs.argmax(axis=1) == labels)[order]
    k = np.arange(1, len(order) + 1)
    return {
        "coverage": (k / len(order)).tolist(),
        "accuracy": (np.cumsum(correct) / k).tolist(),
        "threshold": confidence[order].tolist(),
    }


def open_set_answer(probs: np.ndarray, threshold: float, unknown: int | None) -> np.ndarray:
    """The answer of each image: its top class, or ``-1`` where the top probability is below
    ``threshold`` (and, when the classes have one, where the top class is ``unknown``)."""
    probs = np.asarray(probs)
    top = probs.argmax(axis=1)
    rejected = probs.max(axis=1) < threshold
    if unknown is not None:
        rejected |= top == unknown
    return np.where(rejected, -1, top)


def thin(curve: dict[str, list[float]], points: int = 200) -> dict[str, list[float]]:
    """Every ``len / points``-th point of a curve (its last kept), for a JSON report."""
    n = len(next(iter(curve.values()), []))
    if n <= points:
        return curve
    keep = sorted({*np.linspace(0, n - 1, points).round().astype(int).tolist()})
    return {k: [v[i] for i in keep] for k, v in curve.items()}


def open_set_summary(
    probs: np.ndarray, labels: np.ndarray, threshold: float, unknown: int | None
) -> dict[str, float]:
    """What the open-set answer does to a labelled set: the share of images answered (not
    ``unknown``), the accuracy of those answers, and the share of the right top-1 answers of
    the known classes that are kept (the cost of the threshold). An image of the ``unknown``
    class answered ``unknown`` counts as right."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    answer = open_set_answer(probs, threshold, unknown)
    top_right = probs.argmax(axis=1) == labels
    known = labels != unknown if unknown is not None else np.ones(len(labels), bool)
    answered = answer >= 0
    right = (answer == labels) | (~answered & ~known)
    return {
        "answered": float(answered.mean()) if len(labels) else float("nan"),
        "accuracy_answered": float(right[answered].mean()) if answered.any() else float("nan"),
        "accuracy": float(right.mean()) if len(labels) else float("nan"),
        "right_kept": float(
            (answered & top_right & known).sum() / max((top_right & known).sum(), 1)
        ),
    }


def calibrate(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    *,
    unknown: int | None,
    keep: float = DEFAULT_KEEP,
    shifted_logits: np.ndarray | None = None,
    shifted_labels: np.ndarray | None = None,
    maximum: float = DEFAULT_MAX_THRESHOLD,
) -> dict:
    """The temperature, fitted on validation, and the open-set threshold, fitted on the
    shifted validation images when given (else on validation), and what they do: the ECE
    before and after on validation and test, the reliability bins, the risk-coverage curve
    of the images the threshold is fitted on, the open-set answer on test."""
    t = fit_temperature(val_logits, val_labels)
    val_before, val_after = softmax(val_logits), softmax(val_logits, t)
    shifted = shifted_logits is not None and len(shifted_labels)
    fit_probs = softmax(shifted_logits, t) if shifted else val_after
    fit_labels = np.asarray(shifted_labels) if shifted else val_labels
    uncapped = open_set_threshold(fit_probs, fit_labels, keep, unknown=unknown)
    threshold = min(uncapped, maximum)
    test_before, test_after = softmax(test_logits), softmax(test_logits, t)
    return {
        "temperature": t,
        "min_confidence": threshold,
        "keep": keep,
        "fitted_on": "shifted validation" if shifted else "validation",
        "uncapped": uncapped,
        "maximum": maximum,
        "fit": {
            "images": int(len(fit_labels)),
            "risk_coverage": thin(risk_coverage(fit_probs, fit_labels)),
        },
        "val": {
            "images": int(len(val_labels)),
            "ece_before": expected_calibration_error(val_before, val_labels),
            "ece_after": expected_calibration_error(val_after, val_labels),
            "reliability_before": reliability(val_before, val_labels),
            "reliability_after": reliability(val_after, val_labels),
            "risk_coverage": thin(risk_coverage(val_after, val_labels)),
        },
        "test": {
            "images": int(len(test_labels)),
            "ece_before": expected_calibration_error(test_before, test_labels),
            "ece_after": expected_calibration_error(test_after, test_labels),
            **open_set_summary(test_after, test_labels, threshold, unknown),
        },
    }
