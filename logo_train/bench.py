"""The final benchmark: every backbone's best checkpoint on the test split.

For each checkpoint: accuracy, balanced accuracy, macro and per-class precision / recall / F1,
the confusion matrix; parameters, FLOPs per image (``torch.utils.flop_counter``) and size on
disk; latency p50 / p95 at batch 1 after warm-up and throughput at a larger batch, in eager
PyTorch (inference mode) and, on CPU, in ONNX Runtime after ``torch.onnx.export`` (its logits
checked against PyTorch's). In the pipeline each checkpoint is measured in a Ray task with
``benchmark.num_cpus`` / ``num_gpus``, so latency is taken where the model would serve.

Everything goes into one ``benchmark.json``; ``logo_train.report`` turns it into the table and
the plots.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from logo_train import checkpoint as ckpt
from logo_train.calibration import calibrate
from logo_train.config import BenchmarkConfig
from logo_train.data.augment import TransformSpec, eval_inputs, eval_spec
from logo_train.data.brands import UNKNOWN
from logo_train.data.shards import read_manifest, read_split
from logo_train.metrics import (
    absent_classes,
    classification_metrics,
    confusion,
    per_class_metrics,
)
from logo_train.models import count_parameters

log = logging.getLogger(__name__)

BENCHMARK_JSON = "benchmark.json"


# --- measurements (pure: a model in, numbers out) ---------------------------------------------


def logits_of(
    model: nn.Module, images: list[bytes], spec: TransformSpec, device: torch.device, batch: int
) -> np.ndarray:
    """The logits of every encoded image (eval transform), in order, float64 ``(N, C)``."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(eval_inputs(images[start : start + batch], spec))
            out.append(model(x.to(device)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def predict(
    model: nn.Module, images: list[bytes], spec: TransformSpec, device: torch.device, batch: int
) -> np.ndarray:
    """Predicted class of every encoded image (eval transform), in order."""
    logits = logits_of(model, images, spec, device, batch)
    return logits.argmax(1) if len(logits) else np.zeros(0, np.int64)


def quality(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Overall metrics, per-class metrics and the confusion matrix (rows: true class)."""
    n = len(class_names)
    return {
        "metrics": classification_metrics(y_true=y_true, y_pred=y_pred, num_classes=n),
        "per_class": per_class_metrics(y_true=y_true, y_pred=y_pred, class_names=class_names),
        "confusion": confusion(y_true=y_true, y_pred=y_pred, num_classes=n).tolist(),
        "samples": int(len(y_true)),
        "absent_classes": [class_names[i] for i in absent_classes(y_true, n)],
    }


def count_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass on one image, by torch's own counter (a multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def time_calls(fn: Callable[[], Any], runs: int, warmup: int, sync: Callable[[], None]) -> list:
    """Seconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def speed(
    forward: Callable[[np.ndarray], Any],
    image_size: int,
    cfg: BenchmarkConfig,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Latency p50 / p95 (ms) at batch 1 and throughput (images/s) at ``throughput_batch``."""
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, image_size, image_size), dtype=np.float32)
    many = rng.standard_normal((cfg.throughput_batch, 3, image_size, image_size), dtype=np.float32)
    latency = np.asarray(time_calls(lambda: forward(one), cfg.latency_runs, cfg.warmup_runs, sync))
    batch = time_calls(lambda: forward(many), cfg.throughput_runs, 1, sync)
    return {
        "latency_ms_p50": float(np.percentile(latency, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(latency, 95) * 1e3),
        "throughput_images_per_s": float(cfg.throughput_batch * len(batch) / sum(batch)),
        "throughput_batch": cfg.throughput_batch,
    }


def eager_forward(model: nn.Module, device: torch.device) -> Callable[[np.ndarray], Any]:
    def forward(x: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device, non_blocking=True))

    return forward


def export_onnx(
    model: nn.Module, image_size: int, path: str | Path, exporter: str = "torchscript"
) -> Path:
    """``torch.onnx.export`` with a dynamic batch dimension. 'torchscript' (the classic
    exporter; ~1 s per small model here) or 'dynamo' (torch.export based; 10-20 s)."""
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
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
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
    with torch.inference_mode():
        ref = model.cpu()(torch.from_numpy(x)).numpy()
    got = session.run(["logits"], {"image": x})[0]
    diff = float(np.max(np.abs(ref - got)))
    return {
        "max_abs_diff": diff,
        "matches": diff <= tolerance,
        "prediction_agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
    }


# --- one checkpoint --------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    info = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _folder_mb(uri: str | Path) -> float:
    """Size of a folder's files (a local path or a URI), MiB."""
    from pyarrow import fs as pafs

    from logo_train.data.shards import resolve

    fs, path = resolve(str(uri))
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(i.size for i in infos if i.type == pafs.FileType.File) / 2**20


def benchmark_checkpoint(
    checkpoint: str,
    shards_uri: str,
    cfg: BenchmarkConfig,
    *,
    device: str | None = None,
    history: list[dict[str, float]] | None = None,
    eval_batch_size: int = 256,
    real: Any = None,
    real_sheet_uri: str | None = None,
    outside: Any = None,
) -> dict[str, Any]:
    """Every number of the benchmark for one checkpoint folder (one entry of benchmark.json).
    ``real``: a ``real_eval.RealSet`` scored beside the split (its mistakes' contact sheet
    written to ``real_sheet_uri``); ``outside``: a ``real_eval.OutsideSet`` (photos of no
    class of the run), scored by how many the open-set answer calls ``unknown``. The
    temperature and open-set threshold are fitted on the shards' validation split
    (``logo_train.calibration``) and applied to both."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = max(1, int(cfg.num_cpus))
    torch.set_num_threads(threads)
    model, info = ckpt.load_model(checkpoint)
    model = model.to(dev).eval()
    spec = eval_spec(info)

    table = read_split(shards_uri, cfg.split, ["image", "label"])
    if table.num_rows == 0:
        raise ValueError(f"shards {shards_uri} have no '{cfg.split}' rows to benchmark on")
    y_true = np.asarray(table["label"].to_pylist(), np.int64)
    test_logits = logits_of(model, table["image"].to_pylist(), spec, dev, eval_batch_size)
    y_pred = test_logits.argmax(1)
    entry: dict[str, Any] = {
        "backbone": info.backbone,
        "checkpoint": checkpoint,
        "image_size": info.image_size,
        "pretrained": info.pretrained,
        **quality(y_true, y_pred, info.class_names),
        "params": count_parameters(model),
        "flops": count_flops(model, info.image_size),
        "checkpoint_mb": _folder_mb(checkpoint),
        "weights_mb": sum(p.numel() * p.element_size() for p in model.state_dict().values())
        / 2**20,
        "device": device_info(dev),
    }
    calibration, open_set = fit_open_set(
        model, shards_uri, spec, dev, info.class_names, test_logits, y_true,
        keep=cfg.open_set_keep, batch=eval_batch_size,
    )  # fmt: skip
    if calibration is not None:
        entry["calibration"] = calibration
    if real is not None:
        entry["real"] = _real_entry(
            model, real, spec, dev, eval_batch_size, real_sheet_uri, open_set
        )
    if outside is not None:
        from logo_train.real_eval import score_outside

        entry["outside"] = score_outside(
            model, outside, spec, dev, info.class_names, eval_batch_size, **open_set
        )
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    entry["eager"] = speed(eager_forward(model, dev), info.image_size, cfg, sync)
    entry["onnx"] = None
    if cfg.onnx and dev.type == "cpu":
        entry["onnx"] = _onnx(model, info.image_size, table, spec, cfg, threads)
    if history is None:
        history = ckpt.load_state(checkpoint)["history"]
    entry["history"] = [
        {k: h[k] for k in ("epoch", "train_loss", "val_loss", "val_macro_f1") if k in h}
        for h in history
    ]
    return entry


def fit_open_set(
    model: nn.Module,
    shards_uri: str,
    spec: TransformSpec,
    device: torch.device,
    class_names: list[str],
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    *,
    keep: float,
    batch: int = 256,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The open-set answer of a model, fitted on the shards' validation split
    (``calibration.calibrate``): ``(calibration, open_set)``, where ``open_set`` holds the
    ``temperature``, ``min_confidence`` and ``unknown`` class index that ``score_real`` /
    ``score_outside`` / ``predict`` apply (1, 0: as trained, when there is no validation split;
    ``calibration`` is then None)."""
    unknown = class_names.index(UNKNOWN) if UNKNOWN in class_names else None
    val = read_split(shards_uri, "val", ["image", "label"])
    if not val.num_rows:
        return None, {"temperature": 1.0, "min_confidence": 0.0, "unknown": unknown}
    val_logits = logits_of(model, val["image"].to_pylist(), spec, device, batch)
    val_labels = np.asarray(val["label"].to_pylist(), np.int64)
    calibration = calibrate(
        val_logits, val_labels, test_logits, test_labels, unknown=unknown, keep=keep
    )
    open_set = {
        "temperature": calibration["temperature"],
        "min_confidence": calibration["min_confidence"],
        "unknown": unknown,
    }
    return calibration, open_set


def _real_entry(
    model, real, spec, device, batch_size: int, sheet_uri: str | None, open_set: dict
) -> dict:
    """The real-photo score of one model (``logo_train.real_eval``), at most 200 mistakes
    listed; the contact sheet of its mistakes at ``sheet_uri``."""
    from logo_train.data.shards import write_bytes
    from logo_train.real_eval import mistakes_sheet, score_real

    result = score_real(model, real, spec, device, batch_size, **open_set)
    if sheet_uri and result["mistakes"]:
        write_bytes(sheet_uri, mistakes_sheet(real, result, Path(sheet_uri).stem))
        result["mistakes_png"] = sheet_uri
    result["mistakes"] = result["mistakes"][:200]
    return result


def _onnx(model, image_size, table, spec, cfg: BenchmarkConfig, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(model, image_size, Path(tmp) / "model.onnx", cfg.onnx_exporter)
        export_s = time.perf_counter() - start
        session = onnx_session(path, threads)
        sample = table["image"].to_pylist()[: cfg.throughput_batch]
        x = eval_inputs(sample, spec)
        check = onnx_agreement(model, session, x, cfg.onnx_tolerance)
        if not check["matches"]:
            log.warning(
                "ONNX Runtime logits differ from PyTorch by %.2g (> %.2g)",
                check["max_abs_diff"],
                cfg.onnx_tolerance,
            )
        timings = speed(lambda a: session.run(["logits"], {"image": a}), image_size, cfg)
        return {
            **timings,
            **check,
            "tolerance": cfg.onnx_tolerance,
            "exporter": cfg.onnx_exporter,
            "export_seconds": export_s,
            "model_mb": path.stat().st_size / 2**20,
        }


# --- every backbone of a run -----------------------------------------------------------------


def _run_history(run_path: str) -> list[dict[str, float]] | None:
    try:
        return ckpt.run_history(run_path)
    except (FileNotFoundError, OSError):
        return None


def benchmark_run(
    training: list[dict[str, Any]],
    shards_uri: str,
    cfg: BenchmarkConfig,
    *,
    run_name: str,
    audits: dict[str, dict[str, Any]] | None = None,
    eval_batch_size: int = 256,
    on_ray: bool = True,
    echo=print,
    real_eval: str = "",
    real_outside: str = "",
    out_uri: str | None = None,
) -> dict[str, Any]:
    """The whole benchmark.json for ``training`` (rows of ``train/summary.json``): each
    checkpoint in a Ray task with ``cfg.num_cpus`` / ``num_gpus`` (or in-process). With
    ``real_eval`` (``data.real_eval``) every model is also scored on those real photos, the
    contact sheets of its mistakes written to ``out_uri``."""
    from logo_train.data.shards import join

    real = real_ref = None
    if real_eval:
        from logo_train.real_eval import load_real_set

        real = load_real_set(real_eval, read_manifest(shards_uri).classes)
        for line in real.lines():
            echo(line)
        real_ref = real
        if on_ray:
            import ray

            real_ref = ray.put(real)  # once, not once per task
    outside = outside_ref = None
    if real_outside:
        from logo_train.real_eval import load_outside_set

        outside = outside_ref = load_outside_set(real_outside)
        for line in outside.lines():
            echo(line)
        if on_ray:
            import ray

            outside_ref = ray.put(outside)
    entries = []
    for row in training:
        label = ckpt.run_label(row["backbone"], row.get("round", 1))
        kwargs = {
            "device": "cuda" if cfg.num_gpus > 0 else "cpu",
            "history": _run_history(row["run_path"]),
            "eval_batch_size": eval_batch_size,
            "real": real_ref,
            "outside": outside_ref,
            "real_sheet_uri": join(out_uri, f"real_mistakes_{label}.png")
            if (real is not None and out_uri)
            else None,
        }
        start = time.perf_counter()
        if on_ray:
            import ray

            task = ray.remote(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)(benchmark_checkpoint)
            entry = ray.get(task.remote(row["checkpoint"], shards_uri, cfg, **kwargs))
        else:
            entry = benchmark_checkpoint(row["checkpoint"], shards_uri, cfg, **kwargs)
        entry["train"] = {
            k: row[k]
            for k in ("best_val_macro_f1", "best_epoch", "epochs", "seconds", "train_images_per_s")
            if k in row
        }
        entry["round"] = row.get("round", 1)
        entry["label"] = label
        if row.get("cleaning"):
            entry["cleaning"] = row["cleaning"]
        if audits and entry["label"] in audits:
            entry["audit"] = audits[entry["label"]]
        entries.append(entry)
        echo("[benchmark] " + summary_line(entry) + f"  ({time.perf_counter() - start:.0f} s)")
    manifest = read_manifest(shards_uri)
    extra = {"real_eval": real.summary()} if real is not None else {}
    if outside is not None:
        extra["real_outside"] = outside.summary()
    return {
        **extra,
        "run": run_name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "split": cfg.split,
        "shards": shards_uri,
        "benchmark_config": asdict(cfg),
        "classes": list(manifest.classes),
        "train_counts": [manifest.counts["train"].get(c, 0) for c in manifest.classes],
        "backbones": entries,
    }


def summary_line(entry: dict[str, Any]) -> str:
    m, e, o = entry["metrics"], entry["eager"], entry.get("onnx")
    line = (
        f"{entry.get('label', entry['backbone']):<22} macro-F1 {m['macro_f1']:.3f}  "
        f"acc {m['accuracy']:.3f}  "
        f"p50 {e['latency_ms_p50']:.2f} ms  {e['throughput_images_per_s']:.0f} img/s"
    )
    if entry.get("real"):
        line += f"  | real photos top-1 {entry['real']['top1']:.3f}"
    if entry.get("outside"):
        line += f"  | outside brands unknown {entry['outside']['answered_unknown']:.3f}"
    if o:
        line += f"  | ONNX p50 {o['latency_ms_p50']:.2f} ms (max |diff| {o['max_abs_diff']:.1e})"
    return line


def write_json(data: dict[str, Any], uri: str | Path) -> str:
    """``data`` as JSON at ``uri`` (a local path or a URI)."""
    from logo_train.data.shards import write_bytes

    write_bytes(str(uri), json.dumps(data, indent=1).encode())
    return str(uri)
