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

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from logo_train import checkpoint as ckpt
from logo_train.audit import SUMMARY_JSON as AUDIT_SUMMARY_JSON
from logo_train.audit import SUSPECTED_PARQUET, SUSPECTED_PNG
from logo_train.calibration import DEFAULT_MAX_THRESHOLD, calibrate
from logo_train.config import BenchmarkConfig, Config
from logo_train.data.augment import (
    TransformSpec,
    decode_batch,
    eval_inputs,
    eval_spec,
    to_tensor_batch,
    train_transform,
)
from logo_train.data.brands import UNKNOWN
from logo_train.data.shards import read_manifest, read_split
from logo_train.engine import channels_last, logits_of, scoring_model
from logo_train.exported import export_onnx, onnx_agreement, onnx_session
from logo_train.layout import CLEANING_PARQUET
from logo_train.metrics import (
    absent_classes,
    classification_metrics,
    confusion,
    per_class_metrics,
)
from logo_train.models import count_parameters
from logo_train.real_eval import (
    load_outside_set,
    load_real_set,
    mistakes_sheet,
    score_outside,
    score_real,
)
from logo_train.storage import (
    exists,
    is_file,
    join,
    read_bytes,
    read_json,
    resolve,
    write_bytes,
    write_json,
)

log = logging.getLogger(__name__)


# --- measurements (pure: a model in, numbers out) ---------------------------------------------


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
    model = scoring_model(model, dev)
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
        "test_views": list(info.test_views),
        **quality(y_true, y_pred, info.class_names),
        **_cost(model, info.image_size, checkpoint, dev),
    }
    calibration, open_set = fit_open_set(
        model, shards_uri, spec, dev, info.class_names, test_logits, y_true,
        keep=cfg.open_set_keep, shift=cfg.open_set_shift, passes=cfg.open_set_passes,
        maximum=cfg.open_set_max, batch=eval_batch_size,
    )  # fmt: skip
    if calibration is not None:
        entry["calibration"] = calibration
    if real is not None:
        entry["real"] = _real_entry(
            model, real, spec, dev, eval_batch_size, real_sheet_uri, open_set
        )
    if outside is not None:
        entry["outside"] = score_outside(
            model, outside, spec, dev, info.class_names, eval_batch_size, **open_set
        )
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    entry["eager"] = speed(eager_forward(model, dev), info.image_size, cfg, sync)
    entry["onnx"] = None
    if cfg.onnx and dev.type == "cpu":
        entry["onnx"] = _onnx(model, info.image_size, table, spec, cfg, threads)
    entry["history"] = _curves(history or ckpt.load_state(checkpoint)["history"])
    return entry


def _cost(model: nn.Module, image_size: int, checkpoint: str, device: torch.device) -> dict:
    """What a model costs: parameters, FLOPs, checkpoint and weights size, the device."""
    return {
        "params": count_parameters(model),
        "flops": count_flops(model, image_size),
        "checkpoint_mb": _folder_mb(checkpoint),
        "weights_mb": sum(p.numel() * p.element_size() for p in model.state_dict().values())
        / 2**20,
        "device": device_info(device),
    }


def _curves(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The training history's curves, as the report plots them."""
    keys = ("epoch", "train_loss", "val_loss", "val_macro_f1")
    return [{k: h[k] for k in keys if k in h} for h in history]


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
    shift: float = 0.8,
    passes: int = 3,
    maximum: float = DEFAULT_MAX_THRESHOLD,
    batch: int = 256,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The open-set answer of a model (``calibration.calibrate``): the temperature fitted on
    the shards' validation split, the threshold on the same images seen through the training
    augmentation at strength ``shift`` (``passes`` seeded passes; 0: the plain split), capped
    at ``maximum``. Returns ``(calibration, open_set)``, where ``open_set`` holds the
    ``temperature``, ``min_confidence`` and ``unknown`` class index that ``score_real`` /
    ``score_outside`` / ``predict`` apply (1, 0: as trained, when there is no validation split;
    ``calibration`` is then None)."""
    unknown = class_names.index(UNKNOWN) if UNKNOWN in class_names else None
    val = read_split(shards_uri, "val", ["image", "label"])
    if not val.num_rows:
        return None, {"temperature": 1.0, "min_confidence": 0.0, "unknown": unknown}
    images = val["image"].to_pylist()
    val_logits = logits_of(model, images, spec, device, batch)
    val_labels = np.asarray(val["label"].to_pylist(), np.int64)
    shifted = None
    if shift > 0:
        shifted = shifted_logits(model, images, spec, device, shift, passes, batch)
    calibration = calibrate(
        val_logits, val_labels, test_logits, test_labels, unknown=unknown, keep=keep,
        shifted_logits=shifted, shifted_labels=np.tile(val_labels, passes), maximum=maximum,
    )  # fmt: skip
    if shift > 0:
        calibration.update(shift=shift, passes=passes)
    open_set = {
        "temperature": calibration["temperature"],
        "min_confidence": calibration["min_confidence"],
        "unknown": unknown,
    }
    return calibration, open_set


def shifted_logits(
    model: nn.Module,
    images: list[bytes],
    spec: TransformSpec,
    device: torch.device,
    strength: float,
    passes: int,
    batch: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """The logits of ``images`` seen through the training augmentation at ``strength``,
    ``passes`` times (pass ``k`` seeded ``seed + k``: the same numbers every run), in order."""
    shifted = replace(spec, strength=strength)
    decoded = decode_batch(images)
    out = []
    with torch.inference_mode():
        for k in range(passes):
            train_transform(shifted).set_random_seed(seed + k)
            for start in range(0, len(decoded), batch):
                x = channels_last(torch.from_numpy(to_tensor_batch(
                    decoded[start : start + batch], shifted, train=True
                )))  # fmt: skip
                out.append(model(x.to(device)).double().cpu().numpy())
    return np.concatenate(out)


def _real_entry(
    model, real, spec, device, batch_size: int, sheet_uri: str | None, open_set: dict
) -> dict:
    """The real-photo score of one model (``logo_train.real_eval``), at most 200 mistakes
    listed; the contact sheet of its mistakes at ``sheet_uri``."""

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

    manifest = read_manifest(shards_uri)
    real = load_real_set(real_eval, manifest.classes) if real_eval else None
    outside = load_outside_set(real_outside) if real_outside else None
    for photos in (p for p in (real, outside) if p is not None):
        for line in photos.lines():
            echo(line)
    # the photos go to Ray's object store once, not once per task
    real_ref, outside_ref = (_put(x) if on_ray else x for x in (real, outside))
    entries = []
    for row in training:
        label = ckpt.run_label(row["backbone"], row.get("round", 1))
        sheet = (
            join(out_uri, f"real_mistakes_{label}.png") if real is not None and out_uri else None
        )
        kwargs = {
            "device": "cuda" if cfg.num_gpus > 0 else "cpu",
            "history": _run_history(row["run_path"]),
            "eval_batch_size": eval_batch_size,
            "real": real_ref,
            "outside": outside_ref,
            "real_sheet_uri": sheet,
        }
        start = time.perf_counter()
        if on_ray:
            import ray

            task = ray.remote(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)(benchmark_checkpoint)
            entry = ray.get(task.remote(row["checkpoint"], shards_uri, cfg, **kwargs))
        else:
            entry = benchmark_checkpoint(row["checkpoint"], shards_uri, cfg, **kwargs)
        entries.append(_with_training(entry, row, label, audits or {}))
        echo("[benchmark] " + summary_line(entry) + f"  ({time.perf_counter() - start:.0f} s)")
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
        "val_images": manifest.split_rows("val"),
        "backbones": entries,
    }


def _put(value: Any) -> Any:
    """``value`` in Ray's object store (None stays None)."""
    import ray

    return None if value is None else ray.put(value)


def _with_training(entry: dict, row: dict, label: str, audits: dict[str, dict]) -> dict:
    """A benchmark entry with what its training row and audit say about the model."""
    keys = ("best_val_macro_f1", "best_epoch", "epochs", "seconds", "train_images_per_s")
    entry["train"] = {k: row[k] for k in keys if k in row}
    if "images" in row.get("time", {}):  # training images seen: the compute the table compares
        entry["train"]["images"] = row["time"]["images"]
    entry["round"] = row.get("round", 1)
    entry["label"] = label
    if row.get("cleaning"):
        entry["cleaning"] = row["cleaning"]
    if label in audits:
        entry["audit"] = audits[label]
    return entry


def summary_line(entry: dict[str, Any]) -> str:
    m, e, o = entry["metrics"], entry["eager"], entry.get("onnx")
    line = (
        f"{entry.get('label', entry['backbone']):<22} macro-F1 {m['macro_f1']:.3f}  "
        f"acc {m['accuracy']:.3f}  "
        f"p50 {e['latency_ms_p50']:.2f} ms  {e['throughput_images_per_s']:.0f} img/s"
    )
    if entry.get("real"):
        r = entry["real"]
        line += f"  | real photos top-1 {r['top1']:.3f}"
        if "open_set" in r:
            o_s = r["open_set"]
            line += (
                f", right after the open-set answer {o_s['accuracy']:.3f} "
                f"(right answers kept {o_s['right_kept']:.3f})"
            )
    if entry.get("outside"):
        line += f"  | outside brands unknown {entry['outside']['answered_unknown']:.3f}"
    if o:
        line += f"  | ONNX p50 {o['latency_ms_p50']:.2f} ms (max |diff| {o['max_abs_diff']:.1e})"
    return line


# --- the pipeline's benchmark stage ---------------------------------------------------------


def trained_models(cfg: Config, models: list | None = None) -> list[dict]:
    """The models to benchmark: ``models`` (this invocation's ``BackboneResult``s), else the
    run's ``train/summary.json`` and, when the run has one, ``clean/summary.json``."""
    if models:
        return [asdict(m) for m in models]
    layout = cfg.layout
    if not exists(layout.train_summary):
        raise FileNotFoundError(
            f"{layout.train_summary} not found: train first (logo-train run, or logo-train train)"
        )
    rows = read_json(layout.train_summary)["results"]
    if not rows:
        raise ValueError(f"{layout.train_summary} lists no trained backbone")
    if exists(layout.clean_summary):
        rows += read_json(layout.clean_summary)["results"]
    return rows


def audit_summaries(cfg: Config, rows: list[dict]) -> dict[str, dict]:
    """Each model's audit summary (when it was audited), by its label (``ckpt.run_label``)."""
    out = {}
    for row in rows:
        r = row.get("round", 1)
        uri = join(cfg.layout.audit(row["backbone"], r), AUDIT_SUMMARY_JSON)
        if exists(uri):
            out[ckpt.run_label(row["backbone"], r)] = read_json(uri)
    return out


def benchmark_models(
    cfg: Config, models: list | None, shards_uri: str, keep_finished: bool = False
) -> dict[str, Any]:
    """The ``benchmark`` stage: every model's best checkpoint (``trained_models``) on the test
    split, in a Ray task; writes ``report/benchmark.json`` and copies the best model's
    suspected-label list beside it. Returns the benchmark data. ``keep_finished`` (a resumed
    run): a ``benchmark.json`` of exactly these checkpoints is kept as it is; ``logo-train
    benchmark`` always measures again."""
    from logo_train.raysetup import init_ray

    rows = trained_models(cfg, models)
    found = finished_benchmark(cfg, rows) if keep_finished else None
    if found:
        print(f"[benchmark] every model measured before ({cfg.layout.benchmark_json}); kept")
        return found
    init_ray()
    data = benchmark_run(
        rows,
        shards_uri,
        cfg.benchmark,
        run_name=cfg.name,
        audits=audit_summaries(cfg, rows),
        eval_batch_size=cfg.train.eval_batch_size,
        real_eval=cfg.data.real_eval,
        real_outside=cfg.data.real_outside,
        out_uri=cfg.layout.report,
    )
    write_json(cfg.layout.benchmark_json, data)
    copy_suspected(cfg, data)
    return data


def finished_benchmark(cfg: Config, rows: list[dict]) -> dict[str, Any] | None:
    """``report/benchmark.json`` when it measured exactly these models' checkpoints before
    (a resumed run), else None."""
    if not exists(cfg.layout.benchmark_json):
        return None
    data = read_json(cfg.layout.benchmark_json)
    measured = sorted(b["checkpoint"] for b in data.get("backbones", []))
    return data if measured == sorted(r["checkpoint"] for r in rows) else None


def copy_suspected(cfg: Config, data: dict) -> None:
    """The suspected-label list and contact sheet, into the report folder. When the run had a
    cleaning round, the list is that round's ``cleaning.parquet``: the audit's ranking with what
    was done to each label (``action``: kept, dropped or relabelled; ``train_label``), of the
    best backbone when it was the one cleaned, else of the backbone that was (the cleaning
    chose it on round 1's validation; round 2 may leave another backbone best). Without a
    cleaning round, the best backbone's audit."""
    from logo_train.results import best_entry

    best = best_entry(data)["backbone"]
    cleaned = [e["backbone"] for e in data["backbones"] if e.get("round", 1) > 1]
    source = best if best in cleaned or not cleaned else cleaned[0]
    sources = {n: join(cfg.layout.audit(source), n) for n in (SUSPECTED_PARQUET, SUSPECTED_PNG)}
    cleaning = join(cfg.layout.clean_round(source, 2), CLEANING_PARQUET)
    if is_file(cleaning):
        sources[SUSPECTED_PARQUET] = cleaning
    for name, src in sources.items():
        if is_file(src):
            write_bytes(join(cfg.layout.report, name), read_bytes(src))
