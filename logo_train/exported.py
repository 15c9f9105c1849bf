"""The exported model, one owner: the ONNX export and its check against PyTorch, the one
``model.json`` schema (``ExportedModel``), writing a checkpoint or a run's best model as an
exported folder, and resolving what ``--model`` points at (a run folder, a checkpoint folder,
an exported folder; local or a URI). ``predict`` (batch inference), ``serve`` and the
benchmark's ONNX Runtime timing use it.

The exporter, the checkpoint loader and timm are imported inside the functions that export a
checkpoint: an exported model is read and predicted on CPU with ONNX Runtime alone.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from logo_train.data.augment import RESIZE_MODES
from logo_train.data.brands import UNKNOWN
from logo_train.layout import MODEL_DIR, RunLayout
from logo_train.results import best_entry, load, name
from logo_train.storage import copy_dir, download_dir, exists, is_file, join, read_json

if TYPE_CHECKING:
    from torch import nn

MODEL_JSON = "model.json"
MODEL_ONNX = "model.onnx"
EXPORT_FORMAT = "logo-train-model"
EXPORT_VERSION = 1


class ModelError(ValueError):
    """A model folder that cannot be used: names the file and what is wrong with it."""


# --- ONNX: export, a session, the check against PyTorch ------------------------------------


def export_onnx(
    model: nn.Module, image_size: int, path: str | Path, exporter: str = "torchscript"
) -> Path:
    """``torch.onnx.export`` with a dynamic batch dimension. 'torchscript' (the classic
    exporter; ~1 s per small model here) or 'dynamo' (torch.export based; 10-20 s)."""
    import torch

    path = Path(path)
    model = model.cpu().eval()
    x = torch.zeros(2, 3, image_size, image_size)
    common = {"input_names": ["image"], "output_names": ["logits"], "verbose": False}
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            **common,
        )
    else:
        with warnings.catch_warnings():
            # TracerWarning: shapes read as Python numbers (``models.SameConv2d``'s padding)
            # become constants; the input size is fixed (model.json), only the batch varies
            ignored = (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning)
            warnings.simplefilter("ignore", ignored)
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
                **common,
            )
    return path


def onnx_session(model: str | Path | bytes, threads: int):
    """An ONNX Runtime CPU session for a model file (or its bytes) with ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_agreement(
    model: nn.Module, session, x: np.ndarray, tolerance: float
) -> dict[str, float | bool]:
    """Largest |logit difference| and argmax agreement of ONNX Runtime vs PyTorch on ``x``."""
    import torch

    with torch.inference_mode():
        ref = model.cpu()(torch.from_numpy(x)).numpy()
    got = session.run(["logits"], {"image": x})[0]
    diff = float(np.max(np.abs(ref - got)))
    return {
        "max_abs_diff": diff,
        "matches": diff <= tolerance,
        "prediction_agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
    }


# --- the exported folder: model.json, export, load --------------------------------------------


@dataclass
class ExportedModel:
    """``model.json`` of an exported model."""

    backbone: str
    class_names: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    resize: str = "stretch"
    """How a non-square input becomes square (``model.resize`` of the training)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The run's test metrics for this checkpoint (empty when exported outside a run)."""
    temperature: float = 1.0
    """Logits are divided by this before the softmax (temperature scaling, fitted on the run's
    validation split; 1 = as trained)."""
    min_confidence: float = 0.0
    """The open-set threshold: a top probability below it is answered ``unknown``
    (``logo-train predict --min-confidence`` overrides it; 0 = every image gets a class)."""
    unknown_class: str = ""
    """The class that means "none of mine" (the embedded data's ``unknown``): answered as
    ``unknown`` too; empty when the classes have none."""
    test_views: list[float] = field(default_factory=lambda: [1.0])
    """The views whose mean logits the model answers with (``model.test_views``); the ONNX
    graph computes them, so a reader needs nothing but the input size."""
    source_checkpoint: str = ""
    onnx: str = MODEL_ONNX
    onnx_max_abs_diff: float = 0.0
    """Largest |logit difference| of ONNX Runtime vs PyTorch, checked at export."""
    format: str = EXPORT_FORMAT
    format_version: int = EXPORT_VERSION
    created: str = ""


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    exporter: str = "torchscript",
    tolerance: float = 1e-3,
    calibration: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/model.onnx`` + ``out/model.json`` for a checkpoint folder; the ONNX logits are
    checked against PyTorch on a random batch (raises when they differ by more than
    ``tolerance``). ``calibration``: the benchmark's (temperature, ``min_confidence``), kept in
    ``model.json`` for ``predict``."""
    import torch

    from logo_train import checkpoint as ckpt

    out = Path(out)
    model, info = ckpt.load_model(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, info.image_size, out / MODEL_ONNX, exporter)
    size = info.image_size
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    check = onnx_agreement(model, onnx_session(onnx_path, 1), x.numpy(), tolerance)
    if not check["matches"]:
        raise RuntimeError(
            f"{onnx_path}: ONNX Runtime logits differ from PyTorch by {check['max_abs_diff']:.2g} "
            f"(> {tolerance:g}); the export is not faithful"
        )
    meta = ExportedModel(
        backbone=info.backbone,
        class_names=list(info.class_names),
        image_size=info.image_size,
        mean=list(info.mean),
        std=list(info.std),
        resize=info.resize,
        metrics=dict(metrics or {}),
        source_checkpoint=str(checkpoint),
        onnx_max_abs_diff=check["max_abs_diff"],
        created=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        temperature=float((calibration or {}).get("temperature", 1.0)),
        min_confidence=float((calibration or {}).get("min_confidence", 0.0)),
        unknown_class=UNKNOWN if UNKNOWN in info.class_names else "",
        test_views=list(info.test_views),
    )
    (out / MODEL_JSON).write_text(json.dumps(asdict(meta), indent=2))
    return out


def export_from(path: str | Path, out: str | Path, backbone: str | None = None) -> str:
    """``logo-train export``: a checkpoint folder, or a run folder's best backbone (chosen on
    validation; ``backbone`` picks another), with the run's test metrics when it has them.
    ``path`` and ``out`` are local paths or URIs (s3://, gs://, file://); returns ``out``."""
    out = str(out)
    if "://" not in out:
        return str(_export_from(str(path).rstrip("/"), Path(out), backbone))
    with tempfile.TemporaryDirectory(prefix="logo-train-export-") as tmp:
        copy_dir(_export_from(str(path).rstrip("/"), Path(tmp), backbone), out)
    return out


def _export_from(uri: str, out: Path, backbone: str | None) -> Path:
    if _is_checkpoint(uri):
        if backbone:
            raise ValueError("--backbone goes with a run folder, not a checkpoint folder")
        return export_model(uri, out)
    run = RunLayout(uri)
    if is_file(run.benchmark_json):
        data, _ = load(uri)
        entries = {name(e): e for e in data["backbones"]}
        entry = entries.get(backbone) if backbone else best_entry(data)
        if entry is None:
            raise ValueError(f"--backbone {backbone}: not in {uri} (it has {sorted(entries)})")
        return export_model(
            entry["checkpoint"],
            out,
            metrics=entry_metrics(data, entry),
            calibration=entry.get("calibration"),
        )
    if exists(run.train_summary):  # trained, not benchmarked: no test metrics to carry
        rows = {r["backbone"]: r for r in read_json(run.train_summary)["results"]}
        if not rows:
            raise ValueError(f"{run.train_summary}: no trained backbone")
        best = max(rows.values(), key=lambda r: r["best_val_macro_f1"])
        row = rows.get(backbone) if backbone else best
        if row is None:
            raise ValueError(
                f"--backbone {backbone}: not in {run.train_summary} (it has {sorted(rows)})"
            )
        return export_model(row["checkpoint"], out)
    raise ModelError(
        f"{uri}: not a checkpoint folder (state.pt) or a run folder (report/benchmark.json or "
        "train/summary.json)"
    )


def entry_metrics(data: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A benchmark.json entry's test metrics as model.json carries them (with split, samples)."""
    return {**entry["metrics"], "split": data["split"], "samples": entry["samples"]}


def load_exported(folder: str | Path) -> ExportedModel:
    """``model.json`` of an exported folder, checked against its ``model.onnx`` (inputs of the
    stated image size, one logit per class) before any work; ``ModelError`` names the file."""
    folder = Path(folder)
    meta_path, onnx_path = folder / MODEL_JSON, folder / MODEL_ONNX
    for path in (meta_path, onnx_path):
        if not path.is_file():
            raise ModelError(
                f"{path}: missing (an exported model folder holds {MODEL_JSON} and {MODEL_ONNX})"
            )
    try:
        raw = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{meta_path}: not valid JSON ({e})") from e
    if raw.get("format") != EXPORT_FORMAT:
        raise ModelError(
            f"{meta_path}: field 'format' is {raw.get('format')!r}, not {EXPORT_FORMAT!r}"
        )
    needed = ("backbone", "class_names", "image_size", "mean", "std")
    missing = [k for k in needed if k not in raw]
    if missing:
        raise ModelError(f"{meta_path}: missing field(s) {missing}")

    if raw.get("resize", "stretch") not in RESIZE_MODES:
        raise ModelError(
            f"{meta_path}: field 'resize' is {raw['resize']!r}, not one of {list(RESIZE_MODES)}"
        )
    known = set(ExportedModel.__dataclass_fields__)
    meta = ExportedModel(**{k: v for k, v in raw.items() if k in known})
    _check_onnx_shape(onnx_path, meta)
    return meta


def _check_onnx_shape(onnx_path: Path, meta: ExportedModel) -> None:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"{onnx_path}: not a loadable ONNX model ({e})") from e
    shape = session.get_inputs()[0].shape
    if list(shape[1:]) != [3, meta.image_size, meta.image_size]:
        raise ModelError(
            f"{onnx_path}: expects input {shape}, but {MODEL_JSON} says image_size "
            f"{meta.image_size} (N x 3 x {meta.image_size} x {meta.image_size}): the files "
            "come from different models"
        )
    logits = session.get_outputs()[0].shape
    if logits[-1] != len(meta.class_names):
        raise ModelError(
            f"{onnx_path}: gives {logits[-1]} logits, {MODEL_JSON} names "
            f"{len(meta.class_names)} classes"
        )


# --- which model: what --model points at ------------------------------------------------------


@dataclass
class ResolvedModel:
    """What ``--model`` points at, made ready for prediction."""

    meta: ExportedModel
    onnx_dir: str
    """An exported folder (ONNX Runtime on CPU)."""
    checkpoint: str = ""
    """The checkpoint folder, when there is one (PyTorch on GPU)."""
    described_as: str = ""


def _is_checkpoint(uri: str | Path) -> bool:
    from logo_train.checkpoint import STATE

    return is_file(join(str(uri), STATE))


def resolve_model(path: str | Path, workdir: str | Path) -> ResolvedModel:
    """A run folder (its report's ``model/``, else the best backbone's checkpoint), a checkpoint
    folder, or an exported model folder; a local path or a URI (s3://, gs://, file://). A
    checkpoint is exported into ``workdir`` first; an exported folder at a URI is copied
    there (ONNX Runtime reads local files)."""
    from logo_train import checkpoint as ckpt

    uri = str(path).rstrip("/")
    if not exists(uri):
        raise ModelError(f"--model {uri}: not found")
    if is_file(join(uri, MODEL_ONNX)) or _exported_json(uri):
        return _exported(_local(uri, workdir), f"exported model {uri}")
    if _is_checkpoint(uri):
        if not is_file(join(uri, ckpt.MODEL_JSON)):
            raise ModelError(
                f"{join(uri, ckpt.MODEL_JSON)}: missing (a checkpoint holds state.pt and "
                "model.json)"
            )
        return _from_checkpoint(uri, workdir, f"checkpoint {uri}")
    run = RunLayout(uri)
    if is_file(join(run.model, MODEL_JSON)):
        return _exported(
            _local(run.model, workdir), f"run {uri}: exported best backbone {run.model}"
        )
    if is_file(run.benchmark_json):
        data, _ = load(uri)
        best = best_entry(data)
        return _from_checkpoint(
            best["checkpoint"],
            workdir,
            f"run {uri}: best backbone {name(best)}",
            entry_metrics(data, best),
            best.get("calibration"),
        )
    raise ModelError(
        f"--model {uri}: not a run folder (report/benchmark.json), a checkpoint folder "
        f"(state.pt + model.json) or an exported model folder ({MODEL_JSON} + {MODEL_ONNX})"
    )


def _local(uri: str, workdir: str | Path) -> Path:
    """An exported model folder on this machine: a local path as it is, a URI's files copied
    into ``workdir``."""
    if "://" not in uri:
        return Path(uri)
    return download_dir(uri, Path(workdir) / "exported")


def _exported(folder: Path, described_as: str) -> ResolvedModel:
    """An exported folder; its source checkpoint too when it is still there (for the GPU)."""
    meta = load_exported(folder)
    source = meta.source_checkpoint
    checkpoint = source if source and _is_checkpoint(source) else ""
    return ResolvedModel(meta, str(folder), checkpoint, described_as)


def _exported_json(uri: str) -> bool:
    try:
        return read_json(join(uri, MODEL_JSON)).get("format") == EXPORT_FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _from_checkpoint(
    checkpoint: str | Path,
    workdir: str | Path,
    described_as: str,
    metrics: dict | None = None,
    calibration: dict | None = None,
) -> ResolvedModel:
    if not _is_checkpoint(checkpoint):
        missing = join(str(checkpoint), "state.pt")
        raise ModelError(f"{missing}: missing (checkpoint moved or deleted?)")
    out = Path(workdir) / "model"
    export_model(checkpoint, out, metrics=metrics, calibration=calibration)
    return ResolvedModel(load_exported(out), str(out), str(checkpoint), described_as)


def export_best(folder: str) -> str:
    """``<report>/model/``: the best backbone (chosen on validation) of the report ``folder`` as
    a self-contained ONNX model + model.json, with its test metrics; what ``logo-train predict``
    takes."""
    import tempfile

    data, _ = load(folder)
    best = best_entry(data)
    out = join(folder, MODEL_DIR)
    with tempfile.TemporaryDirectory() as tmp:  # then copied: the report may be a URI
        exported = export_model(
            best["checkpoint"],
            tmp,
            metrics=entry_metrics(data, best),
            calibration=best.get("calibration"),
        )
        copy_dir(exported, out)
    return out
