"""Use a trained model: export it as a self-contained folder, and predict the labels of image
files, folders or shards with Ray Data batch inference.

An exported model is a folder with ``model.onnx`` (logits for a float32 NCHW batch) and
``model.json`` (class names, image size, mean/std, backbone, the run's test metrics): it needs
neither the project's config nor the run folder, only ONNX Runtime.

``predict`` reads every input, checks it as the ingest does (unreadable, empty, not an image,
truncated, over ``max_pixels``: rejected with a reason, never a crash), then runs the
evaluation path of training (``augment.eval_inputs``: decode, make square as the model was
trained to (``resize`` in ``model.json``), resize to its input size, normalise) and the model
in a pool of Ray actors (ONNX Runtime on CPU, PyTorch on GPU).
Rows written + rejected = files seen.

The exporter, the checkpoint loader and timm are imported inside the functions that export a
checkpoint or run PyTorch: an exported model is predicted on CPU with ONNX Runtime alone.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from logo_train.data.augment import decodes, eval_spec, eval_uint8, normalise
from logo_train.data.brands import UNKNOWN
from logo_train.data.datasets import configure_data_context, one_opencv_thread
from logo_train.data.ingest import IMAGE_EXTENSIONS, Reject, stored_bytes
from logo_train.data.shards import read_manifest, shard_uris
from logo_train.exported import MODEL_ONNX, ExportedModel, ResolvedModel, resolve_model
from logo_train.raysetup import init_ray
from logo_train.storage import absolute, exists, is_file, join, resolve, write_json

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 2**20
"""Files larger than this are rejected unread ("too_large")."""


# --- which inputs -----------------------------------------------------------------------------


@dataclass
class Inputs:
    """Every input of a prediction, in order: files (with the class named by the folder they
    sit in, when any) and shard files (their rows are the inputs)."""

    files: list[tuple[str, str]] = field(default_factory=list)
    """(path, label) -- label '' when the file is not in a class folder of the model."""
    shards: list[str] = field(default_factory=list)
    shard_rows: int = 0
    split: str = "test"

    @property
    def seen(self) -> int:
        return len(self.files) + self.shard_rows


def collect_inputs(sources: list[str], class_names: list[str], split: str = "test") -> Inputs:
    """Files, folders (recursive, any layout) and shards folders / URIs. A file inside
    ``<folder>/<class name>/...`` (case-insensitive) is labelled with that class. A source that
    does not exist stops everything before any work, naming it."""

    by_name = {c.lower(): c for c in class_names}
    out = Inputs(split=split)
    for source in sources:
        if "://" in source or Path(source, "manifest.json").is_file():
            if not exists(join(source, "manifest.json")):
                raise FileNotFoundError(f"{source}: no manifest.json (not a shards folder)")
            manifest = read_manifest(source)
            if split not in manifest.counts:
                raise ValueError(
                    f"{source}: shards have no split {split!r} ({list(manifest.counts)})"
                )
            out.shards += shard_uris(source, split, manifest)
            out.shard_rows += sum(manifest.counts[split].values())
            continue
        path = Path(source)
        if path.is_file():
            out.files.append((str(path), ""))
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                rel = Path(dirpath).relative_to(path).parts
                label = by_name.get(rel[0].lower(), "") if rel else ""
                out.files += [(str(Path(dirpath) / f), label) for f in sorted(filenames)]
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
    return out


# --- the Ray Data stages ----------------------------------------------------------------------


def read_files(batch: dict[str, np.ndarray], max_pixels: int) -> dict[str, list]:
    """``map_batches``: path -> the bytes a shard would hold, or a reject reason."""

    images, reasons, details = [], [], []
    for path in batch["path"]:
        data, reason, detail = b"", "", ""
        try:
            p = Path(path)
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise Reject("unsupported_extension", f"extension {p.suffix!r} is not an image")
            size = p.stat().st_size
            if size > MAX_FILE_BYTES:
                raise Reject("too_large", f"{size} bytes is over {MAX_FILE_BYTES}")
            data = stored_bytes(p.read_bytes(), max_pixels, full_decode=False)
        except Reject as r:
            reason, detail = r.reason, r.detail
        except OSError as e:
            reason, detail = "unreadable", f"{type(e).__name__}: {e.strerror or e}"
        images.append(data)
        reasons.append(reason)
        details.append(detail)
    return {**batch, "image": images, "reason": reasons, "detail": details}


def preprocess(batch: dict[str, np.ndarray], spec) -> dict[str, Any]:
    """``map_batches`` (tasks, beside the model's actors): stored bytes -> ``pixels``, the
    evaluation path's uint8 NCHW (``augment.eval_uint8``); a row OpenCV cannot decode is
    rejected here. Rejected rows get zeros, the model skips them."""

    one_opencv_thread()
    images = list(batch["image"])
    reasons, details = list(batch["reason"]), list(batch["detail"])
    keep = [i for i, r in enumerate(reasons) if not r]
    try:
        pixels = eval_uint8([images[i] for i in keep], spec) if keep else None
    except ValueError:  # a file the ingest check passed that OpenCV cannot read
        for i in [i for i in keep if not decodes(images[i])]:
            reasons[i], details[i] = "corrupt", "OpenCV cannot decode it"
        keep = [i for i, r in enumerate(reasons) if not r]
        pixels = eval_uint8([images[i] for i in keep], spec) if keep else None
    size = spec.image_size
    out = np.zeros((len(images), 3, size, size), np.uint8)
    if keep:
        out[keep] = pixels
    rest = {k: v for k, v in batch.items() if k != "image"}
    return {**rest, "pixels": out, "reason": reasons, "detail": details}


def read_shard_rows(batch: dict[str, np.ndarray], split: str) -> dict[str, list]:
    """``map_batches``: shard URIs -> their rows (path = the row's source path or id)."""
    import pyarrow.parquet as pq

    out: dict[str, list] = {k: [] for k in ("index", "path", "label", "image", "reason", "detail")}
    for index, uri in zip(batch["index"], batch["shard"], strict=True):
        fs, path = resolve(str(uri))
        columns = ["image", "label_name", "id", "source_path"]
        table = pq.read_table(path, filesystem=fs, columns=columns)
        n = table.num_rows
        sources = table["source_path"].to_pylist()
        ids = table["id"].to_pylist()
        out["index"] += [int(index) * 1_000_000 + i for i in range(n)]
        out["path"] += [s or f"{uri}#{i}" for s, i in zip(sources, ids, strict=True)]
        out["label"] += table["label_name"].to_pylist()
        out["image"] += table["image"].to_pylist()
        out["reason"] += [""] * n
        out["detail"] += [""] * n
    return out


class Predictor:
    """``map_batches`` actor: holds the model once, scores a batch of stored image bytes.
    ONNX Runtime on CPU; PyTorch on GPU when a checkpoint is at hand. The model comes as bytes
    (through Ray's object store), so an actor on another node needs no access to the driver's
    files."""

    def __init__(
        self,
        meta: dict,
        onnx: bytes,
        torch_state: bytes,
        device: str,
        threads: int,
        top_k: int,
        min_confidence: float = 0.0,
    ):

        meta = ExportedModel(**meta)
        self.classes = np.asarray(meta.class_names, dtype=object)
        self.spec = eval_spec(meta)
        self.top_k = min(top_k, len(meta.class_names))
        self.temperature = meta.temperature
        self.min_confidence = min_confidence
        names = list(meta.class_names)
        self.unknown = names.index(meta.unknown_class) if meta.unknown_class in names else None
        if device == "cuda" and torch_state:
            import io

            import torch

            from logo_train.models import build_model, with_test_views

            model = build_model(meta.backbone, len(meta.class_names), meta.image_size)
            # the views first: the state's keys are load_model's
            model = with_test_views(model, meta.test_views, meta.image_size)
            model.load_state_dict(torch.load(io.BytesIO(torch_state), weights_only=True))
            self.model = model.cuda().eval()
            self.run = self._torch
        else:
            from logo_train.exported import onnx_session

            self.session = onnx_session(onnx, threads)
            self.run = lambda x: self.session.run(["logits"], {"image": x})[0]

    def _torch(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x).cuda()).float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:

        n = len(batch["path"])
        reasons, details = batch["reason"], batch["detail"]
        keep = [i for i, r in enumerate(reasons) if not r]
        x = normalise(batch["pixels"][keep], self.spec.mean, self.spec.std)
        k = self.top_k
        top_idx = np.zeros((n, k), np.int64)
        top_p = np.zeros((n, k), np.float32)
        if keep:
            from logo_train.calibration import softmax

            prob = softmax(self.run(x), self.temperature)
            order = np.argsort(-prob, axis=1)[:, :k]
            top_idx[keep] = order
            top_p[keep] = np.take_along_axis(prob, order, 1)
        read = np.asarray(reasons) == ""
        unsure = read & (top_p[:, 0] < self.min_confidence)
        unknown_class = read & (top_idx[:, 0] == self.unknown) if self.unknown is not None else 0
        why = np.where(unsure, f"below min-confidence {self.min_confidence:.3f}", "")
        why = np.where(~unsure & unknown_class, f"class {UNKNOWN}", why)
        label = np.where(why != "", UNKNOWN, self.classes[top_idx[:, 0]])
        out = {
            "index": batch["index"],
            "path": batch["path"],
            "true_label": batch["label"],
            "label": np.where(read, label, ""),
            "probability": top_p[:, 0],
            "unknown_reason": why,
            "reason": reasons,
            "detail": details,
            "actor": np.full(n, os.getpid()),
            "finished_at": np.full(n, time.time()),  # the actor's clock: the streaming rate
        }
        for j in range(k):
            out[f"top{j + 1}_label"] = self.classes[top_idx[:, j]]
            out[f"top{j + 1}_probability"] = top_p[:, j]
        return out


# --- the whole prediction ---------------------------------------------------------------------


FILE_SUFFIXES = (".csv", ".parquet")
FORMATS = ("parquet", "csv")
PREDICTIONS, REJECTED, SUMMARY_JSON = "predictions", "rejected", "summary.json"
"""A folder output's parts: Ray Data's files of answers and of rejected inputs, the summary."""
STAT_COLUMNS = ["reason", "true_label", "label", "top1_label", "actor", "finished_at"]
"""What a folder output brings back to the driver: counts, metrics and timing, no images."""


@dataclass
class PredictSummary:
    model: str
    backbone: str
    out: str
    rejected_file: str
    seen: int
    predicted: int
    rejected: int
    reasons: dict[str, int]
    seconds: float
    """Wall time of the Ray Data execution, start-up and writing included."""
    start_seconds: float
    """Until the first batch was predicted (actors started, model loaded, first batch)."""
    images_per_s: float
    """Streaming rate after the first batch (the actors' clocks)."""
    actors_used: int = 0
    labelled: int = 0
    """Rows whose true class is known (class folders, shards): the metrics count these."""
    metrics: dict[str, float] = field(default_factory=dict)
    unknown_labels: dict[str, int] = field(default_factory=dict)
    written_by: str = "driver"
    """'driver' (one file, rows in input order) or 'ray-data' (a folder of part files)."""


def predict(
    model: str | Path,
    sources: list[str],
    out: str | Path,
    *,
    top_k: int = 3,
    batch_size: int = 64,
    actors: int = 0,
    cpus_per_actor: float = 1.0,
    device: str = "cpu",
    split: str = "test",
    max_pixels: int = 40_000_000,
    min_confidence: float | None = None,
    out_format: str = "parquet",
    progress: bool = True,
    echo=print,
) -> PredictSummary:
    """Predict every input of ``sources`` with ``model``. An image whose calibrated top
    probability is below ``min_confidence`` (None: the model's own, ``model.json``; 0: off),
    or whose top class is the model's ``unknown`` class, is answered ``unknown``, the reason in
    ``unknown_reason``; ``top1_label`` keeps the class it would have named.

    ``out`` a file (.csv or .parquet): the driver gathers the answers and writes them in input
    order, the rejected inputs to ``<out stem>.rejected<suffix>`` beside it (a few thousand
    images). Any other ``out`` is a folder (a local path or a URI: file://, s3://, gs://) that
    Ray Data writes where the actors' blocks are, ``out_format`` part files: ``predictions/``,
    ``rejected/`` and ``summary.json``; only the columns the summary counts come back to the
    driver. ``actors`` 0 sizes the model's actor pool to the cluster (``pool_size``)."""
    out = str(out)
    one_file = _check_args(out, top_k, min_confidence, out_format)
    with tempfile.TemporaryDirectory(prefix="logo-train-predict-") as workdir:
        resolved = resolve_model(model, workdir)
        meta = resolved.meta
        inputs = collect_inputs(sources, meta.class_names, split)
        if inputs.seen == 0:
            raise ValueError(f"no input files under {sources}")
        echo(
            f"[predict] {resolved.described_as} ({meta.backbone}, {len(meta.class_names)} classes, "
            f"{meta.image_size} px): {len(inputs.files)} file(s), {inputs.shard_rows} shard row(s)"
        )
        init_ray()
        pool = pool_size(actors, cpus_per_actor, device)
        configure_data_context(progress_bars=progress and not one_file)
        # our bar reports progress; Ray Data's periodic progress log lines would repeat it
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        threshold = meta.min_confidence if min_confidence is None else min_confidence
        echo(open_set_line(meta, threshold, min_confidence is None))
        ds = _predictions(
            _dataset(inputs, max_pixels, max(pool)),
            resolved,
            batch_size=batch_size,
            pool=pool,
            cpus_per_actor=cpus_per_actor,
            device=device,
            top_k=top_k,
            min_confidence=threshold,
        )
        start = time.time()
        if one_file:
            table = _collect(ds, inputs.seen, progress)
        else:
            ds = ds.materialize()  # the answers stay in the object store, where they were made
            table = _gather(ds, STAT_COLUMNS)
        if table is None or table.num_rows != inputs.seen:
            got = 0 if table is None else table.num_rows
            raise RuntimeError(f"predict lost inputs: {inputs.seen} seen, {got} came back")
        columns = answer_columns(resolved.meta, top_k, _has_labels(table))
        if one_file:
            out_file, rejected_file = _write_files(table, Path(out), columns)
        else:
            out_file, rejected_file = _write_folder(ds, out, columns, out_format)
        summary = _summary(table, resolved, inputs, (start, time.time()), out_file, rejected_file)
        summary.written_by = "driver" if one_file else "ray-data"
        if not one_file:
            write_json(join(absolute(out), SUMMARY_JSON), asdict(summary))
    for line in summary_lines(summary):
        echo(line)
    return summary


def _check_args(out: str, top_k: int, min_confidence: float | None, out_format: str) -> bool:
    """Whether ``out`` is one file (else a folder); raises on a bad argument."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ValueError(f"--min-confidence must be in 0..1, got {min_confidence}")
    if out_format not in FORMATS:
        raise ValueError(f"--format {out_format!r}: one of {', '.join(FORMATS)}")
    suffix = Path(out.rstrip("/")).suffix.lower()
    if suffix in FILE_SUFFIXES:
        return True
    if suffix and not out.endswith("/"):
        raise ValueError(
            f"--out {out}: a file must end in .csv or .parquet; a folder (Ray Data writes it) "
            f"must not look like a file (end it in '/')"
        )
    if is_file(out):
        raise ValueError(f"--out {out}: a file, not a folder (a file must end in .csv or .parquet)")
    return False


def pool_size(actors: int, cpus_per_actor: float, device: str) -> tuple[int, int]:
    """(min, max) model actors. ``actors`` > 0: exactly that many (checked against the
    cluster's CPUs). 0: sized to the cluster as it is now: one per GPU with ``device`` cuda;
    on CPU as many as fit while one CPU stays free for reading and decoding (Ray Data's tasks),
    at least one; Ray Data starts one and adds the others while work is queued."""
    import ray

    resources = ray.cluster_resources()
    if actors < 0:
        raise ValueError(f"--actors must be 0 (sized to the cluster) or more, got {actors}")
    if actors:
        _check_cpus(actors, cpus_per_actor, device, resources.get("CPU", 0))
        return actors, actors
    if device == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise ValueError("--device cuda: this Ray cluster has no GPU")
        return 1, gpus
    return 1, max(1, int((resources.get("CPU", 0) - 1) // cpus_per_actor))


def _predictions(
    ds,
    resolved: ResolvedModel,
    *,
    batch_size: int,
    pool: tuple[int, int],
    cpus_per_actor: float,
    device: str,
    top_k: int,
    min_confidence: float,
):
    """The inputs' dataset through ``preprocess`` (decode + resize, in tasks pipelined with
    the model; not fused into the actors) and a pool of ``Predictor`` actors."""
    import ray

    meta = resolved.meta
    ds = ds.map_batches(
        preprocess, fn_kwargs={"spec": eval_spec(meta)}, batch_size=batch_size, num_cpus=0.5
    )
    low, high = pool
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "meta": asdict(meta),
            "onnx": Path(resolved.onnx_dir, MODEL_ONNX).read_bytes(),
            "torch_state": checkpoint_weights(resolved.checkpoint) if device == "cuda" else b"",
            "device": device,
            "threads": max(1, int(cpus_per_actor)),
            "top_k": top_k,
            "min_confidence": min_confidence,
        },
        batch_size=batch_size,
        # a block at a time per actor, so a slow-starting actor still gets its share
        compute=ray.data.ActorPoolStrategy(
            min_size=low, max_size=high, max_tasks_in_flight_per_actor=1
        ),
        num_cpus=cpus_per_actor,
        num_gpus=1 if device == "cuda" else 0,
    )


def _collect(ds, seen: int, progress: bool):
    """Every predicted block on the driver (a progress bar over ``seen`` inputs), in input
    order; None when nothing came back."""
    import pyarrow as pa

    tables = []
    bar = _progress(seen, progress)
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        tables.append(table)
        bar.update(table.num_rows)
    bar.close()
    return pa.concat_tables(tables).sort_by("index") if tables else None


def _gather(ds, columns: list[str]):
    """``columns`` of a materialised dataset on the driver (None when it has no rows)."""
    import pyarrow as pa
    import ray

    tables = [t for t in ray.get(ds.select_columns(columns).to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def answer_columns(meta: ExportedModel, top_k: int, labelled: bool) -> list[str]:
    """The columns of the answers' file(s)."""
    columns = ["path", "label", "probability", "unknown_reason"]
    for j in range(min(top_k, len(meta.class_names))):
        columns += [f"top{j + 1}_label", f"top{j + 1}_probability"]
    if labelled:
        columns.insert(1, "true_label")
    return columns


def _has_labels(table) -> bool:
    import pyarrow.compute as pc

    ok = pc.equal(table["reason"], "")
    return bool(pc.any(pc.and_(ok, pc.not_equal(table["true_label"], ""))).as_py())


def answers_of(table, columns: list[str]):
    """The read inputs' answers (``columns``) of a block."""
    import pyarrow.compute as pc

    return table.filter(pc.equal(table["reason"], "")).select(columns)


def rejected_of(table):
    """The rejected inputs of a block, with their reasons."""
    import pyarrow.compute as pc

    return table.filter(pc.not_equal(table["reason"], "")).select(["path", "reason", "detail"])


def _write_files(table, out: Path, columns: list[str]) -> tuple[str, str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    rejected_file = out.with_name(f"{out.stem}.rejected{out.suffix}")
    _write_table(answers_of(table, columns), out)
    _write_table(rejected_of(table), rejected_file)
    return str(out), str(rejected_file)


def _write_folder(ds, out: str, columns: list[str], out_format: str) -> tuple[str, str]:
    """Ray Data writes the answers and the rejected inputs as part files where the blocks
    are (each folder replaced: a second run into the same ``out`` leaves no stale parts)."""
    from ray.data import SaveMode

    where = absolute(out)  # tasks run in their own working folders
    parts = {
        PREDICTIONS: ds.map_batches(
            answers_of, fn_kwargs={"columns": columns}, batch_format="pyarrow", batch_size=None
        ),
        REJECTED: ds.map_batches(rejected_of, batch_format="pyarrow", batch_size=None),
    }
    for name, part in parts.items():
        getattr(part, f"write_{out_format}")(join(where, name), mode=SaveMode.OVERWRITE)
    return join(where, PREDICTIONS), join(where, REJECTED)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="predict", disable=not enabled)


def _summary(table, resolved: ResolvedModel, inputs: Inputs, wall, out_file, rejected_file):
    """Counts, metrics and timing from the answers' ``STAT_COLUMNS``; ``wall`` the driver's
    (start, end) of the execution."""
    import pyarrow.compute as pc

    start, end = wall
    done = np.asarray(table["finished_at"].to_numpy(), np.float64)
    first_at = float(done.min())
    first_rows = int((done == first_at).sum())
    steady = float(done.max()) > first_at and table.num_rows > first_rows
    ok = pc.equal(table["reason"], "")
    rows = table.filter(ok)
    reasons = table.filter(pc.invert(ok))["reason"].to_pylist()
    summary = PredictSummary(
        model=resolved.described_as,
        backbone=resolved.meta.backbone,
        out=out_file,
        rejected_file=rejected_file,
        seen=inputs.seen,
        predicted=rows.num_rows,
        rejected=len(reasons),
        reasons=dict(Counter(reasons)),
        seconds=end - start,
        start_seconds=max(0.0, first_at - start),
        images_per_s=(table.num_rows - first_rows) / (done.max() - first_at) if steady else 0.0,
        actors_used=len(set(table["actor"].to_pylist())),
    )
    labelled = pc.not_equal(rows["true_label"], "")
    if pc.any(labelled).as_py():
        _score_labelled(summary, rows.filter(labelled), resolved.meta.class_names)
    return summary


def open_set_line(meta: ExportedModel, threshold: float, own: bool) -> str:
    """What the prediction answers ``unknown``, on one line."""
    if threshold <= 0 and not meta.unknown_class:
        return "[predict] every image gets one of the model's classes (--min-confidence 0)"
    where = "the model's own, fitted by its benchmark" if own else "--min-confidence"
    parts = []
    if threshold > 0:
        parts.append(f"top probability below {threshold:.3f} ({where})")
    if meta.unknown_class:
        parts.append(f"top class '{meta.unknown_class}'")
    return (
        f"[predict] answered '{UNKNOWN}': "
        + " or ".join(parts)
        + f"; probabilities at temperature {meta.temperature:.3f}"
    )


def _check_cpus(actors: int, cpus_per_actor: float, device: str, total: float) -> None:
    """Actors that take every CPU never start: Ray Data keeps CPU for its other operators, and
    the run would wait forever (seen on 2 cores with one actor of 2 CPUs)."""
    if device == "cpu" and actors * cpus_per_actor >= total:
        raise ValueError(
            f"--actors {actors} x --cpus-per-actor {cpus_per_actor:g} asks for every CPU of this "
            f"Ray cluster ({total:g}): Ray Data would never start the actors; leave it some CPU "
            f"(e.g. --actors {max(1, int(total) - 1)} --cpus-per-actor 1)"
        )


def checkpoint_weights(checkpoint: str) -> bytes:
    """The model weights of a checkpoint as bytes ('' without one: ONNX Runtime then)."""
    if not checkpoint:
        log.warning("no checkpoint behind this model: ONNX Runtime on CPU instead of the GPU")
        return b""
    import io

    import torch

    from logo_train.checkpoint import load_model

    buf = io.BytesIO()
    torch.save(load_model(checkpoint)[0].state_dict(), buf)
    return buf.getvalue()


def _dataset(inputs: Inputs, max_pixels: int, actors: int):
    """One Ray Dataset of (index, path, label, image bytes, reason, detail) rows, in blocks of
    at most 256 files and at least four per actor (so every actor gets work)."""
    import ray

    parts = []
    if inputs.files:
        items = [{"index": i, "path": p, "label": lab} for i, (p, lab) in enumerate(inputs.files)]
        blocks = min(len(items), max(4 * actors, -(-len(items) // 256)))
        parts.append(
            ray.data.from_items(items, override_num_blocks=blocks).map_batches(
                read_files, fn_kwargs={"max_pixels": max_pixels}, batch_size=64
            )
        )
    if inputs.shards:
        offset = len(inputs.files) + 1
        items = [{"index": offset + i, "shard": s} for i, s in enumerate(inputs.shards)]
        parts.append(
            ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                read_shard_rows, fn_kwargs={"split": inputs.split}, batch_size=1
            )
        )
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _score_labelled(summary: PredictSummary, truth, class_names: list[str]) -> None:
    """The metrics of the labelled inputs (``truth``: their rows) into ``summary``: of the
    class each image would be given (top-1), and of the answers (``unknown`` included)."""
    from logo_train.metrics import classification_metrics

    index = {c: i for i, c in enumerate(class_names)}
    names = truth["true_label"].to_pylist()
    known = [i for i, n in enumerate(names) if n in index]
    summary.unknown_labels = dict(Counter(n for n in names if n not in index))
    summary.labelled = len(known)
    if not known:
        return
    preds = truth["top1_label"].to_pylist()
    answers = truth["label"].to_pylist()
    summary.metrics = classification_metrics(
        y_true=[index[names[i]] for i in known],
        y_pred=[index[preds[i]] for i in known],
        num_classes=len(index),
    )
    answered = [i for i in known if answers[i] != UNKNOWN]
    right = [i for i in known if preds[i] == names[i]]
    summary.metrics["answered"] = len(answered) / len(known)
    summary.metrics["right_kept"] = sum(answers[i] == names[i] for i in right) / max(len(right), 1)


def _write_table(table, path: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)


def summary_lines(s: PredictSummary) -> list[str]:
    lines = [
        f"[predict] files seen {s.seen}: predicted {s.predicted}, rejected {s.rejected}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(s.reasons.items()))})" if s.reasons else "")
        + f"; {s.seconds:.1f} s ({s.start_seconds:.1f} s to the first batch, then "
        + (
            f"{s.images_per_s:.0f} images/s"
            if s.images_per_s > 0
            else "too few batches to time a steady rate"
        )
        + f" on {s.actors_used} actor(s))",
        f"[predict] predictions: {s.out}"
        + (" (part files written by Ray Data)" if s.written_by == "ray-data" else ""),
    ]
    if s.rejected:
        lines.append(f"[predict] rejected, with reasons: {s.rejected_file}")
    if s.metrics:
        m = s.metrics
        lines.append(
            f"[predict] against the {s.labelled} labelled input(s): accuracy {m['accuracy']:.3f}, "
            f"macro-F1 {m['macro_f1']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f} "
            f"(top-1); answered {m['answered']:.3f} of them, {m['right_kept']:.3f} of the right "
            f"top-1 answers kept (the rest '{UNKNOWN}')"
        )
    if s.unknown_labels:
        lines.append(f"[predict] labels the model does not know (not scored): {s.unknown_labels}")
    return lines
