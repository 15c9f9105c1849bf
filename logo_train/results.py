"""A run's ``benchmark.json``, read back: where it is, what each entry is called, which entry
is the model a run hands over (chosen on validation). The report, the exported model and the
benchmark's own summary read it through here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from logo_train.layout import BENCHMARK_JSON, REPORT_DIR
from logo_train.storage import is_file, join, parent, read_json


def load(path: str | Path) -> tuple[dict[str, Any], str]:
    """benchmark.json from a run folder, its report folder, or the file itself (a local path or
    a URI); returns the data and the folder (URI) holding it."""

    uri = str(path).rstrip("/")
    candidates = [join(uri, BENCHMARK_JSON), join(join(uri, REPORT_DIR), BENCHMARK_JSON)]
    if uri.endswith(".json"):
        candidates.insert(0, uri)
    for candidate in candidates:
        if is_file(candidate):
            return read_json(candidate), parent(candidate)
    raise FileNotFoundError(
        f"no {BENCHMARK_JSON} in {uri} or {join(uri, REPORT_DIR)} (run the benchmark stage "
        "first: logo-train run --stages benchmark,report, or logo-train benchmark)"
    )


def start_word(entry: dict[str, Any]) -> str:
    """'ImageNet' for a backbone fine-tuned from pretrained weights, else 'random init'."""
    return "random init" if entry.get("pretrained", "none") == "none" else "ImageNet"


def name(entry: dict[str, Any]) -> str:
    """A table's name of an entry: the backbone, ``-round2`` after it for a cleaning round."""
    return entry.get("label") or entry["backbone"]


def best_entry(data: dict[str, Any]) -> dict[str, Any]:
    """The model to use: the backbone chosen on **validation** (its training's best val
    macro-F1 over every round); the test split only reports it. Of that backbone's rounds,
    the latest within ``benchmark.round_within_se`` standard errors of its best round on
    validation (``round_tolerance``): a cleaning round trained on the labels its audit
    corrected, and a validation split of a few hundred images cannot tell it from the round
    before by a point. Test macro-F1 decides only for a benchmark of bare checkpoints that
    carry no training record (``selected_on`` says which)."""
    entries = data["backbones"]
    if selected_on(data) != "val":
        return max(entries, key=lambda e: e["metrics"]["macro_f1"])
    best = best_on_validation(data)
    rounds = [e for e in entries if e["backbone"] == best["backbone"]]
    tolerance = round_tolerance(data, _val(best))
    near = [e for e in rounds if _val(e) >= _val(best) - tolerance - 1e-9]
    return max(near, key=lambda e: e.get("round", 1))


def best_on_validation(data: dict[str, Any]) -> dict[str, Any]:
    """The entry (any backbone, any round) with the best val macro-F1: its backbone is the
    one chosen; ``best_entry`` may hand over a later round of it."""
    return max(data["backbones"], key=_val)


def round_tolerance(data: dict[str, Any], score: float) -> float:
    """How far below the best round's val macro-F1 (``score``) a later round may be and still
    be handed over: ``benchmark.round_within_se`` standard errors of a proportion at ``score``
    on the validation split's images, sqrt(F (1 - F) / n) (the one-standard-error rule); 0
    for a benchmark.json from before the field."""
    within = data.get("benchmark_config", {}).get("round_within_se", 0.0)
    images = data.get("val_images", 0)
    if not within or not images:
        return 0.0
    return within * math.sqrt(max(score * (1 - score), 0.0) / images)


def _val(entry: dict[str, Any]) -> float:
    return entry["train"]["best_val_macro_f1"]


def selected_on(data: dict[str, Any]) -> str:
    """'val' when every entry has its training's validation score, else the benchmark split."""
    ok = all("best_val_macro_f1" in e.get("train", {}) for e in data["backbones"])
    return "val" if ok else data.get("split", "test")


def onnx_metric(entry: dict[str, Any], key: str) -> float:
    """An ONNX Runtime figure of the entry (NaN when it was not timed)."""
    onnx = entry.get("onnx")
    return float(onnx[key]) if onnx else float("nan")
