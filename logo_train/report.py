"""The report of a run, made from ``benchmark.json`` alone (``logo-train report RUN_DIR``).

Writes, next to the JSON: ``benchmark.md`` (the table, units in the column names, and the
best model's sections: real photos, calibration, cleaning), ``benchmark.parquet`` (one row per
backbone, the table's columns) and the plots (``logo_train.plots``); and the run's
closing summary on the terminal (``print_summary``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from logo_train.layout import MODEL_DIR
from logo_train.plots import PLOTS, plot_all, plots_for
from logo_train.results import (
    best_entry,
    best_on_validation,
    load,
    name,
    onnx_metric,
    round_tolerance,
    selected_on,
    start_word,
)
from logo_train.storage import is_dir, join, write_bytes

BENCHMARK_MD = "benchmark.md"
BENCHMARK_PARQUET = "benchmark.parquet"
# (column name with unit, how to get it from a benchmark.json entry, format)
COLUMNS: list[tuple[str, Any, str]] = [
    ("backbone", lambda e: name(e), "{}"),
    ("starts from", lambda e: start_word(e), "{}"),
    ("input (px)", lambda e: e["image_size"], "{}"),
    ("params (M)", lambda e: e["params"] / 1e6, "{:.2f}"),
    ("MFLOPs / image", lambda e: e["flops"] / 1e6, "{:.1f}"),
    ("weights (MB)", lambda e: e["weights_mb"], "{:.2f}"),
    ("epochs", lambda e: _train(e, "epochs"), "{:.0f}"),
    ("training images (k)", lambda e: _train(e, "images") / 1e3, "{:.1f}"),
    ("training (s)", lambda e: _train(e, "seconds"), "{:.0f}"),
    ("training images/s", lambda e: _train(e, "train_images_per_s"), "{:.0f}"),
    ("accuracy", lambda e: e["metrics"]["accuracy"], "{:.4f}"),
    ("balanced accuracy", lambda e: e["metrics"]["balanced_accuracy"], "{:.4f}"),
    ("macro precision", lambda e: e["metrics"]["macro_precision"], "{:.4f}"),
    ("macro recall", lambda e: e["metrics"]["macro_recall"], "{:.4f}"),
    ("macro F1", lambda e: e["metrics"]["macro_f1"], "{:.4f}"),
    ("eager p50 (ms, batch 1)", lambda e: e["eager"]["latency_ms_p50"], "{:.2f}"),
    ("eager p95 (ms, batch 1)", lambda e: e["eager"]["latency_ms_p95"], "{:.2f}"),
    ("eager throughput (images/s)", lambda e: e["eager"]["throughput_images_per_s"], "{:.1f}"),
    ("ONNX Runtime p50 (ms, batch 1)", lambda e: onnx_metric(e, "latency_ms_p50"), "{:.2f}"),
    ("ONNX Runtime p95 (ms, batch 1)", lambda e: onnx_metric(e, "latency_ms_p95"), "{:.2f}"),
    (
        "ONNX Runtime throughput (images/s)",
        lambda e: onnx_metric(e, "throughput_images_per_s"),
        "{:.1f}",
    ),
]


REAL_COLUMNS: list[tuple[str, Any, str]] = [
    ("real photos top-1", lambda e: _real(e, "top1"), "{:.3f}"),
    ("real photos top-3", lambda e: _real(e, "top3"), "{:.3f}"),
    ("real photos macro F1", lambda e: _real(e, "macro_f1"), "{:.3f}"),
]
"""After macro F1, in a run with ``data.real_eval``."""


def columns(data: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The table's columns for ``data``: ``COLUMNS``, with the real-photo ones when scored."""
    if not any(e.get("real") for e in data["backbones"]):
        return COLUMNS
    at = [name for name, _, _ in COLUMNS].index("macro F1") + 1
    return COLUMNS[:at] + REAL_COLUMNS + COLUMNS[at:]


def _real(entry: dict[str, Any], key: str) -> float:
    real = entry.get("real")
    return float(real[key]) if real and key in real else float("nan")


def _train(entry: dict[str, Any], key: str) -> float:
    """A training figure of the entry's model ('–' for a checkpoint benchmarked on its own)."""
    value = entry.get("train", {}).get(key)
    return float("nan") if value is None else float(value)


def _cell(fmt: str, value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return fmt.format(value)


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The table as rows of {column: value}, in benchmark order."""
    return [{name: get(e) for name, get, _ in columns(data)} for e in data["backbones"]]


def markdown(data: dict[str, Any]) -> str:
    """benchmark.md: the table, how it was measured, the best backbone's per-class numbers."""
    entries = data["backbones"]
    if not entries:
        raise ValueError("benchmark.json lists no backbones")
    best = best_entry(data)
    lines = _table_lines(data) + _best_lines(data, best)
    lines += _cleaning_lines(entries)
    lines += _real_lines(data, best)
    lines += _per_class_lines(data, best)
    lines += _calibration_lines(data, best)
    lines += ["", "## Plots", ""]
    lines += [f"![{key}]({PLOTS[key]})" for key in plots_for(data)]
    audits = {name(e): e["audit"] for e in entries if e.get("audit")}
    if audits:
        lines += ["", "## Suspected wrong labels", ""]
        for backbone, a in audits.items():
            lines.append(
                f"- {backbone}: {a.get('suspected', '?')} suspected — {a.get('parquet', '')}"
            )
    return "\n".join(lines) + "\n"


def _table_lines(data: dict[str, Any]) -> list[str]:
    """The title, where and how it was measured, the table and what its columns mean."""
    first = data["backbones"][0]
    dev = first["device"]
    cfg = data.get("benchmark_config", {})
    where = dev.get("gpu") or f"{dev['cpu']} ({dev['cpu_count']} logical CPUs)"
    head = [name for name, _, _ in columns(data)]
    lines = [
        f"# Benchmark: {data['run']}",
        "",
        f"Best checkpoint of each backbone (by val macro-F1) on the **{data['split']}** split "
        f"({first['samples']} images, {len(data['classes'])} classes; each model at its own "
        "input size, 'input (px)'); "
        f"measured {data['created']} on {where}, {dev['device']}, torch {dev['torch']} with "
        f"{dev['torch_threads']} thread(s)"
        + (f", ONNX Runtime {dev['onnxruntime']}" if dev.get("onnxruntime") else "")
        + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|",
    ]
    for e in data["backbones"]:
        lines.append("| " + " | ".join(_cell(fmt, get(e)) for _, get, fmt in columns(data)) + " |")
    lines += _views_lines(data["backbones"])
    lines += _compute_lines(data["backbones"])
    return lines + [
        "",
        "Columns: 'starts from': ImageNet weights fine-tuned, or random init (the five "
        "reference families train from scratch: the table compares families); epochs: "
        "those trained (fewer than the recipe's where train.patience stopped a backbone "
        "early); training images: the training rows the model was fed over all its epochs (the "
        "compute the families are compared at); training (s), training images/s: the "
        "model's training (wall time on its "
        "worker, the first backbone of a worker group also paying the group's start-up; the steady "
        "rate); parameters in millions; MFLOPs = 10^6 floating-point operations per image "
        "(one forward pass, torch.utils.flop_counter; a multiply-add counts 2); weights = "
        "float32 state dict. Accuracy ... macro F1 on the split above (macro = unweighted mean "
        "over classes). Latency: wall time of one batch-1 forward pass after "
        f"{cfg.get('warmup_runs', '?')} warm-up passes, median (p50) and 95th percentile over "
        f"{cfg.get('latency_runs', '?')} passes, eager PyTorch in inference mode vs ONNX Runtime "
        "(CPU execution provider) on the same exported model; throughput: images/s at batch "
        f"{first['eager']['throughput_batch']}. '–': not measured (ONNX Runtime runs on CPU only).",
    ]


def compute_words(entries: list[dict[str, Any]]) -> str:
    """How much training the random-init families of round 1 got: equal compute (the same
    number of training images each, deterministic, unlike seconds) or not; '' without them."""
    scratch = {
        name(e): e["train"]["images"]
        for e in entries
        if start_word(e) == "random init"
        and e.get("round", 1) == 1
        and "images" in e.get("train", {})
    }
    if len(scratch) < 2:
        return ""
    if len(set(scratch.values())) == 1:
        images = next(iter(scratch.values()))
        return (
            f"The {len(scratch)} families from random init trained at **equal compute**: "
            f"{images:,} training images each."
        )
    each = ", ".join(f"{b} {n:,}" for b, n in scratch.items())
    return (
        f"The families from random init trained at **unequal** compute (training images: {each})."
    )


def _compute_lines(entries: list[dict[str, Any]]) -> list[str]:
    words = compute_words(entries)
    return ["", words] if words else []


def _views_lines(entries: list[dict[str, Any]]) -> list[str]:
    """Which models answer with more than one test-time view (``model.test_views``)."""
    multi = [e for e in entries if len(e.get("test_views", [1.0])) > 1]
    if not multi:
        return []
    said = [
        f"{name(e)} answers with the mean logits of {len(e['test_views'])} views ("
        + ", ".join("the whole input" if v >= 1 else f"its centre {v:.0%}" for v in e["test_views"])
        + ")"
        for e in multi
    ]
    return ["", "; ".join(said) + " (`model.test_views`): its scores, latency and MFLOPs count "
            "every view, as `predict` and `serve` run it."]  # fmt: skip


def _best_lines(data: dict[str, Any], best: dict[str, Any]) -> list[str]:
    """The best backbone, the classes the split lacks, the ONNX Runtime check."""
    lines = [
        "",
        f"**Best backbone: {name(best)}** (chosen on {selected_on(data)} macro-F1"
        + (f" {best['train']['best_val_macro_f1']:.4f}" if selected_on(data) == "val" else "")
        + _round_words(data, best)
        + f"; {data['split']} macro F1 {best['metrics']['macro_f1']:.4f}).",
    ]
    absent = best.get("absent_classes") or []
    if absent:
        lines.append(
            f"Classes with no {data['split']} image (left out of the macro averages): "
            + ", ".join(absent)
            + "."
        )
    checks = [e for e in data["backbones"] if e.get("onnx")]
    if checks:
        worst = max(e["onnx"]["max_abs_diff"] for e in checks)
        ok = all(e["onnx"]["matches"] for e in checks)
        lines.append(
            f"ONNX Runtime vs PyTorch logits: largest |difference| {worst:.2e} "
            f"({'within' if ok else 'OUTSIDE'} the tolerance {checks[0]['onnx']['tolerance']:g})."
        )
    return lines


def _round_words(data: dict[str, Any], best: dict[str, Any]) -> str:
    """Why a later round was handed over though an earlier one scored higher on validation."""
    if selected_on(data) != "val":
        return ""
    top = best_on_validation(data)
    if top["train"]["best_val_macro_f1"] <= best["train"]["best_val_macro_f1"]:
        return ""
    score = top["train"]["best_val_macro_f1"]
    within = data["benchmark_config"]["round_within_se"]
    return (
        f", within {within:g} standard error(s) of {name(top)}'s {score:.4f} "
        f"({round_tolerance(data, score):.4f} on {data['val_images']} validation images, "
        "`benchmark.round_within_se`): the later round is handed over"
    )


def _per_class_lines(data: dict[str, Any], best: dict[str, Any]) -> list[str]:
    lines = ["", f"## Per class: {name(best)} (sorted by training images)", ""]
    lines += [
        "| class | training images | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    counts = dict(zip(data["classes"], data["train_counts"], strict=True))
    for pc in sorted(best["per_class"], key=lambda pc: -counts.get(pc["class"], 0)):
        lines.append(
            f"| {pc['class']} | {counts.get(pc['class'], 0)} | {pc['precision']:.3f} | "
            f"{pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |"
        )
    return lines


def _cleaning_lines(entries: list[dict[str, Any]]) -> list[str]:
    """'Cleaning round': each cleaned model beside its round 1 (validation and test macro-F1,
    what the round did to the labels and, on the embedded data, how many were really wrong)."""
    cleaned = [e for e in entries if e.get("cleaning")]
    if not cleaned:
        return []
    first = {e["backbone"]: e for e in entries if e.get("round", 1) <= 1}
    lines = [
        "",
        "## Cleaning round",
        "",
        "The audit's suspected labels were dropped or relabelled and the same backbone trained "
        "again with the same recipe and the loss `train.clean.loss` (`train.clean`); round 1 "
        "trained on the labels as given.",
        "",
        "| model | loss | training rows | dropped | relabelled | wrong labels left "
        "| val macro F1 | test macro F1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    shown: set[int] = set()
    for e in cleaned:
        c = e["cleaning"]
        before = first.get(e["backbone"])
        if before is not None and id(before) not in shown:
            shown.add(id(before))
            as_given = {
                "rows_after": c["rows_before"],
                "flipped_before": c.get("flipped_before"),
                "loss": c.get("loss_before", "?"),
            }
            lines.append(_cleaning_row(before, as_given))
        lines.append(_cleaning_row(e, c))
    for e in entries:
        c = e.get("cleaning")
        if c and "flipped_acted_on" in c:
            lines.append("")
            lines.append(
                f"{name(e)}: rule {c['rule']}; of the {c['dropped'] + c['relabelled']} labels "
                f"acted on, {c['flipped_acted_on']} were really wrong"
                + (
                    f" ({c['relabelled_right']} of {c['relabelled']} relabelled to the true class)."
                    if c["relabelled"]
                    else "."
                )
            )
    return lines


def _cleaning_row(e: dict[str, Any], c: dict[str, Any]) -> str:
    """One model's row of the cleaning table (``c``: its round's counts)."""
    left = c.get("flipped_after", c.get("flipped_before"))
    return (
        f"| {name(e)} | {c.get('loss', '?')} "
        f"| {c.get('rows_after', c.get('rows_before', '?'))} "
        f"| {c.get('dropped', 0)} | {c.get('relabelled', 0)} "
        f"| {'?' if left is None else left} "
        f"| {e['train'].get('best_val_macro_f1', float('nan')):.4f} "
        f"| {e['metrics']['macro_f1']:.4f} |"
    )


def _real_lines(data: dict[str, Any], best: dict[str, Any]) -> list[str]:
    """'Real photos': what ``data.real_eval`` held, and the best model's score per class."""
    real = data.get("real_eval")
    if not real or not best.get("real"):
        return []
    r = best["real"]
    lines = [
        "",
        "## Real photos",
        "",
        f"{real['images']} real photos from `{real['root']}` (`data.real_eval`), through the "
        f"same evaluation path: **{name(best)} top-1 {r['top1']:.3f}, top-3 {r['top3']:.3f}** "
        f"(chance {r['chance']:.3f}); the table's 'real photos' columns give every model's.",
    ]
    if real.get("unknown_classes"):
        lines.append(
            "Folders that match no class of the run, not scored: "
            + ", ".join(f"{k} ({v} files)" for k, v in sorted(real["unknown_classes"].items()))
            + "."
        )
    if real.get("rejected"):
        lines.append(
            f"{len(real['rejected'])} file(s) not scored: "
            + ", ".join(f"{x['path']} ({x['reason']})" for x in real["rejected"][:20])
            + "."
        )
    if r.get("open_set"):
        o = r["open_set"]
        lines.append(
            f"With the open-set answer (threshold {o['min_confidence']:.3f}): "
            f"**{o['accuracy']:.3f} right** ({o['answered']:.3f} answered); it keeps "
            f"{o['right_kept']:.3f} of the right top-1 answers."
        )
    if r.get("per_source"):
        lines += [
            "",
            "| source | photos | top-1 | right after the open-set answer | right answers kept |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {x['source']} | {x['images']} | {x['top1']:.3f} | {x['after_open_set']:.3f} "
            f"| {x['right_kept']:.3f} |"
            for x in r["per_source"]
        ]
    lines += ["", "| class | photos | top-1 | top-3 |", "|---|---:|---:|---:|"]
    for c in sorted(r["per_class"], key=lambda c: -c["images"]):
        lines.append(f"| {c['class']} | {c['images']} | {c['top1']:.3f} | {c['top3']:.3f} |")
    if r.get("mistakes_png"):
        lines += ["", f"Its mistakes: ![real photo mistakes]({r['mistakes_png'].split('/')[-1]})"]
    return lines


def _fitted_on(c: dict[str, Any]) -> str:
    """What the open-set threshold was fitted on, in words (and its cap, where it bit)."""
    if c.get("fitted_on") == "shifted validation":
        words = (
            f"validation images seen through the training augmentation at strength "
            f"{c['shift']:g} ({c['fit']['images']} views)"
        )
    else:
        words = "validation split"
    if c.get("uncapped", 0) > c.get("maximum", 1):
        words += f" (fitted {c['uncapped']:.3f}, capped at {c['maximum']:g})"
    return words


def _calibration_lines(data: dict[str, Any], best: dict[str, Any]) -> list[str]:
    """'Calibration and the open-set answer' of the best model (``logo_train.calibration``)."""
    c = best.get("calibration")
    if not c:
        return []
    val, test = c["val"], c["test"]
    lines = [
        "",
        "## Calibration and the open-set answer",
        "",
        f"{name(best)}: temperature **{c['temperature']:.3f}** fitted on the validation split "
        f"({val['images']} images); expected calibration error (15 bins) on validation "
        f"{val['ece_before']:.4f} before, **{val['ece_after']:.4f}** after; on "
        f"{data['split']} {test['ece_before']:.4f} before, **{test['ece_after']:.4f}** after. "
        f"The open-set threshold, {c['min_confidence']:.3f} (the exported model's "
        f"`min_confidence`), keeps {c['keep']:.0%} of the right answers on the "
        f"{_fitted_on(c)}; below it "
        f"(or for the class `unknown`) `logo-train predict` answers `unknown`. On "
        f"{data['split']} it answers {test['answered']:.3f} of the images, "
        f"{test['accuracy_answered']:.3f} of those right, and keeps "
        f"{test['right_kept']:.3f} of the right top-1 answers.",
    ]
    real = best.get("real", {}).get("open_set")
    if real:
        lines.append(
            f"Real photos (`data.real_eval`): {real['answered']:.3f} answered, "
            f"{real['accuracy_answered']:.3f} of those right; {real['right_kept']:.3f} of the "
            "right top-1 answers kept."
        )
    out = best.get("outside")
    if out:
        folders = ", ".join(f"{k} {v:.2f}" for k, v in out["per_folder"].items())
        lines.append(
            f"Photos of brands outside the classes (`data.real_outside`, {out['images']}): "
            f"**{out['answered_unknown']:.3f} answered `unknown`** "
            f"({out['below_threshold']:.3f} below the threshold, {out['unknown_class']:.3f} "
            f"the class `unknown`); per folder: {folders}."
        )
    return lines


def write_report(path: str | Path) -> str:
    """Regenerate benchmark.md, benchmark.parquet and the plots from benchmark.json (a local
    folder or a URI: every file goes through the same pyarrow filesystem)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, folder = load(path)
    write_bytes(join(folder, BENCHMARK_MD), markdown(data).encode())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows(data)), sink)
    write_bytes(join(folder, BENCHMARK_PARQUET), sink.getvalue().to_pybytes())
    plot_all(data, folder)
    return folder


def print_summary(folder: str, stage_seconds: dict[str, float]) -> None:
    """The run's stage times and the benchmark table's headline columns, on stdout."""

    data, _ = load(folder)
    print("\n=== summary " + "=" * 68)
    print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in stage_seconds.items()))
    print(
        f"{'backbone':<22} {'starts from':<11} {'px':>4} {'macro F1':>8} {'accuracy':>8} "
        f"{'p50 ms':>8} {'ONNX p50 ms':>11} {'images/s':>9} {'MFLOPs':>8} {'train s':>8}"
    )
    for e in data["backbones"]:
        onnx = f"{e['onnx']['latency_ms_p50']:.2f}" if e.get("onnx") else "-"
        print(
            f"{name(e):<22} {start_word(e):<11} {e['image_size']:>4} "
            f"{e['metrics']['macro_f1']:8.3f} {e['metrics']['accuracy']:8.3f} "
            f"{e['eager']['latency_ms_p50']:8.2f} {onnx:>11} "
            f"{e['eager']['throughput_images_per_s']:9.0f} {e['flops'] / 1e6:8.1f} "
            f"{_cell('{:8.0f}', _train(e, 'seconds')):>8}"
        )
    compute = compute_words(data["backbones"])
    if compute:
        print(compute.replace("**", ""))
    print(
        f"best: {name(best_entry(data))} (chosen on {selected_on(data)} macro-F1; table: "
        f"{data['split']} split, {len(data['classes'])} classes)"
    )
    print(f"report folder: {folder}  (benchmark.md, plots, suspected_labels.parquet)")
    model = join(folder, MODEL_DIR)
    if is_dir(model):
        print(f"model: {model}  (logo-train predict --model {model} ...)")
