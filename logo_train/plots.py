"""The plots of a run's results, as PNG files. The report's, from ``benchmark.json``'s data
(``plot_all``): a bar chart per metric across backbones, macro-F1 against latency, training
curves, the best model's normalised confusion matrix, its per-class F1 by class size, and (when
calibrated) its reliability and risk-coverage curves. The search's (``search_plot``): val
macro-F1 per trial over the searched parameters."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from logo_train.config import SearchParam
from logo_train.figures import png_bytes, pyplot
from logo_train.results import best_entry, name, onnx_metric
from logo_train.storage import join, write_bytes

BEST_VAL = "best_val_macro_f1"
"""A trial row's score (``tune.METRIC``)."""

PLOTS = {
    "bars": "metrics_by_backbone.png",
    "scatter": "macro_f1_vs_latency.png",
    "curves": "training_curves.png",
    "confusion": "confusion_best.png",
    "per_class": "per_class_f1_by_size.png",
    "reliability": "reliability_best.png",
    "risk_coverage": "risk_coverage_best.png",
}
CALIBRATION_PLOTS = ("reliability", "risk_coverage")
"""Drawn when the best model's entry has a calibration (benchmark.json from this version on)."""


def plots_for(data: dict[str, Any]) -> list[str]:
    """The plot keys a benchmark.json gives."""
    calibrated = bool(best_entry(data).get("calibration"))
    return [k for k in PLOTS if calibrated or k not in CALIBRATION_PLOTS]


def plot_all(data: dict[str, Any], folder: str) -> None:
    plt = pyplot()
    draw = {
        "bars": _bars,
        "scatter": _scatter,
        "curves": _curves,
        "confusion": _confusion,
        "per_class": _per_class,
        "reliability": _reliability,
        "risk_coverage": _risk_coverage,
    }
    for key in plots_for(data):
        fig = draw[key](data, plt)
        write_bytes(join(str(folder), PLOTS[key]), png_bytes(fig))


def _bars(data, plt):
    metrics = [
        ("macro F1", lambda e: e["metrics"]["macro_f1"]),
        ("balanced accuracy", lambda e: e["metrics"]["balanced_accuracy"]),
        ("accuracy", lambda e: e["metrics"]["accuracy"]),
        ("eager latency p50 (ms)", lambda e: e["eager"]["latency_ms_p50"]),
        ("throughput (images/s)", lambda e: e["eager"]["throughput_images_per_s"]),
        ("params (M)", lambda e: e["params"] / 1e6),
        ("MFLOPs / image", lambda e: e["flops"] / 1e6),
        ("ONNX Runtime p50 (ms)", lambda e: onnx_metric(e, "latency_ms_p50")),
    ]
    names = [name(e) for e in data["backbones"]]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    for ax, (title, get) in zip(axes.flat, metrics, strict=True):
        values = [get(e) for e in data["backbones"]]
        ax.bar(range(len(names)), np.nan_to_num(values), color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(title)
    fig.suptitle(f"{data['run']}: {data['split']} split, every backbone")
    fig.tight_layout()
    return fig


def _scatter(data, plt):
    fig, ax = plt.subplots(figsize=(7, 5))
    for e in data["backbones"]:
        f1 = e["metrics"]["macro_f1"]
        ax.scatter(e["eager"]["latency_ms_p50"], f1, marker="o", color="tab:blue")
        ax.annotate(
            name(e),
            (e["eager"]["latency_ms_p50"], f1),
            fontsize=8,
            textcoords="offset points",
            xytext=(4, 4),
        )
        if e.get("onnx"):
            ax.scatter(e["onnx"]["latency_ms_p50"], f1, marker="s", color="tab:orange")
    ax.scatter([], [], marker="o", color="tab:blue", label="eager PyTorch")
    if any(e.get("onnx") for e in data["backbones"]):
        ax.scatter([], [], marker="s", color="tab:orange", label="ONNX Runtime")
    ax.set_xlabel("latency p50 at batch 1 (ms)")
    ax.set_ylabel(f"{data['split']} macro F1")
    ax.set_title("Accuracy vs latency (up and left is better)")
    ax.legend()
    fig.tight_layout()
    return fig


def _curves(data, plt):
    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, e in enumerate(data["backbones"]):
        h = e.get("history") or []
        if not h:
            continue
        colour = f"C{i % 10}"
        epochs = [r["epoch"] for r in h]
        loss_ax.plot(
            epochs, [r["train_loss"] for r in h], "-", color=colour, label=f"{name(e)} train"
        )
        loss_ax.plot(epochs, [r["val_loss"] for r in h], "--", color=colour, label=f"{name(e)} val")
        f1_ax.plot(epochs, [r["val_macro_f1"] for r in h], "-o", ms=3, color=colour, label=name(e))
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, f1_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Train (solid) and val (dashed) loss")
    f1_ax.set(xlabel="epoch", ylabel="val macro F1", title="Val macro F1")
    loss_ax.legend(fontsize=7, ncol=2)
    f1_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _confusion(data, plt):
    best = best_entry(data)
    cm = np.asarray(best["confusion"], float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = data["classes"]
    size = max(6, 0.32 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{name(best)}: confusion matrix, rows normalised ({data['split']})")
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    return fig


def _per_class(data, plt):
    best = best_entry(data)
    counts = dict(zip(data["classes"], data["train_counts"], strict=True))
    per_class = sorted(best["per_class"], key=lambda pc: -counts.get(pc["class"], 0))
    names = [pc["class"] for pc in per_class]
    fig, ax = plt.subplots(figsize=(max(8, 0.38 * len(names)), 5))
    ax.bar(range(len(names)), [pc["f1"] for pc in per_class], color="tab:green", label="F1")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel(f"{data['split']} F1")
    ax.set_ylim(0, 1)
    twin = ax.twinx()
    twin.plot(range(len(names)), [counts.get(n, 0) for n in names], "k.-", label="training images")
    twin.set_ylabel("training images (given labels)")
    ax.set_title(f"{name(best)}: per-class F1, classes sorted by training-set size")
    fig.tight_layout()
    return fig


def _reliability(data, plt):
    best = best_entry(data)
    val = best["calibration"]["val"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for key, label, colour in (
        ("reliability_before", f"before (ECE {val['ece_before']:.3f})", "tab:red"),
        ("reliability_after", f"after T = {best['calibration']['temperature']:.2f} "
         f"(ECE {val['ece_after']:.3f})", "tab:blue"),
    ):  # fmt: skip
        r = val[key]
        pts = [
            (f, a) for f, a, n in zip(r["confidence"], r["accuracy"], r["count"], strict=True) if n
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=colour, label=label)
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"{name(best)}: reliability on validation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _risk_coverage(data, plt):
    best = best_entry(data)
    c = best["calibration"]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    curves = [("validation", c["val"]["risk_coverage"], "tab:blue")]
    if c.get("fitted_on") == "shifted validation":
        curves.append(("shifted validation (fit)", c["fit"]["risk_coverage"], "tab:orange"))
    if best.get("real", {}).get("risk_coverage"):
        curves.append(("real photos", best["real"]["risk_coverage"], "tab:green"))
    for label, rc, colour in curves:
        ax.plot(rc["coverage"], rc["accuracy"], "-", color=colour, label=label)
        kept = [i for i, t in enumerate(rc["threshold"]) if t >= c["min_confidence"]]
        if kept:
            i = kept[-1]
            ax.plot(rc["coverage"][i], rc["accuracy"][i], "o", color=colour)
    ax.set(xlabel="share of images answered (coverage)", ylabel="accuracy of the answers kept")
    ax.set_title(f"{name(best)}: risk-coverage (dot: min_confidence {c['min_confidence']:.2f})")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def search_plot(rows: list[dict[str, Any]], space: dict[str, SearchParam], title: str) -> bytes:
    """Val macro-F1 over the first two searched parameters (or over the one), as PNG bytes."""
    plt = pyplot()
    params = list(space)
    scored = [r for r in rows if not math.isnan(r[BEST_VAL])]
    f1 = [r[BEST_VAL] for r in scored]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    if len(params) >= 2:
        x, y = params[0], params[1]
        points = ax.scatter(
            [r[x] for r in scored],
            [r[y] for r in scored],
            c=f1,
            s=[30 + 15 * r["epochs"] for r in scored],
            cmap="viridis",
            edgecolors="black",
        )
        fig.colorbar(points, ax=ax, label="best val macro-F1")
        ax.set_ylabel(y)
        if space[y].kind == "loguniform":
            ax.set_yscale("log")
    else:
        x = params[0]
        ax.scatter([r[x] for r in scored], f1, s=[30 + 15 * r["epochs"] for r in scored])
        ax.set_ylabel("best val macro-F1")
    if space[x].kind == "loguniform":
        ax.set_xscale("log")
    if space[x].kind in ("loguniform", "uniform"):
        ax.set_xlim(space[x].low, space[x].high)
    best = max(scored, key=lambda r: r[BEST_VAL])
    ax.annotate(
        f"best {best[BEST_VAL]:.3f}",
        (best[x], best[params[1]] if len(params) >= 2 else best[BEST_VAL]),
        textcoords="offset points",
        xytext=(8, 8),
    )
    ax.set_xlabel(x)
    ax.set_title(f"Search on {title}: val macro-F1 per trial (size = epochs run)")
    fig.tight_layout()
    return png_bytes(fig)
