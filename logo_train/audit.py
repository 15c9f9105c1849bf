"""The label audit: which training labels look wrong.

After training, every training sample is scored with its *given* label: the trust head's
``t_i`` (when the model was trained with ``trust_penalty``), the cross-entropy of the given
label and the margin (given label's logit minus the best other logit). Samples are ranked by
trust (lowest first) or, without a trust head, by loss (highest first), and written as

* ``suspected_labels.parquet``: every training row, ranked (rank 1 = most suspect): id, source
  path, given and predicted label, trust, loss, margin, ``confidence`` (the probability of the
  predicted label), ``suspected``; plus ``is_noisy`` and the
  true label where the data knows them (the embedded dataset);
* ``suspected_labels.png``: a contact sheet of the top 64 with given vs predicted label;
* ``audit_summary.json``: counts and, where the truth is known, how well each score finds the
  flipped labels (AUROC; precision and recall at k = number of flipped labels).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from logo_train.checkpoint import load_trust_model
from logo_train.config import Config
from logo_train.data.augment import TransformSpec, decode_image, eval_inputs, eval_spec
from logo_train.data.shards import read_manifest, read_split
from logo_train.engine import channels_last, cpu_bfloat16, scoring_model
from logo_train.figures import Tile, tile_sheet
from logo_train.models import TrustModel
from logo_train.raysetup import init_ray
from logo_train.storage import exists, join, read_json, write_bytes, write_json

SUSPECTED_PARQUET = "suspected_labels.parquet"
SUSPECTED_PNG = "suspected_labels.png"
SUMMARY_JSON = "audit_summary.json"
TRUST_THRESHOLD = 0.5
"""Trust below this marks a sample ``suspected`` (without a trust head: predicted != given)."""


@dataclass
class Scores:
    """Per-sample scores, aligned with the input order."""

    trust: np.ndarray
    """NaN everywhere when the model has no trust head."""
    loss: np.ndarray
    margin: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    """Softmax over classes, ``(N, C)`` (for peers such as cleanlab)."""

    @property
    def has_trust(self) -> bool:
        return bool(np.isfinite(self.trust).any())

    def suspicion(self) -> np.ndarray:
        """Higher = more likely a wrong label: ``1 - trust``, else the loss."""
        return 1.0 - self.trust if self.has_trust else self.loss


def score_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    bfloat16: bool = False,
) -> Scores:
    """Score ``(images, given labels)`` batches (already transformed) in eval mode, in the
    channels-last layout of ``engine.scoring_model``, which ``score_split``'s images come in;
    ``bfloat16``: the forward passes under CPU bfloat16 autocast (the scores in float32)."""
    model = scoring_model(model, device)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("trust", "loss", "margin", "prob")}
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=bfloat16 and device.type == "cpu")
    with torch.inference_mode(), autocast:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            if isinstance(model, TrustModel):
                logits, trust = model(x, y)
            else:
                logits, trust = model(x), torch.full(y.shape, float("nan"), device=device)
            logits = logits.float()
            loss = nn.functional.cross_entropy(logits, y, reduction="none")
            given = logits.gather(1, y[:, None]).squeeze(1)
            others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
            parts["trust"].append(trust.float().cpu().numpy())
            parts["loss"].append(loss.cpu().numpy())
            parts["margin"].append((given - others).cpu().numpy())
            parts["prob"].append(logits.softmax(1).cpu().numpy())
    prob = np.concatenate(parts["prob"]) if parts["prob"] else np.zeros((0, 0), np.float32)
    return Scores(
        trust=np.concatenate(parts["trust"]) if parts["trust"] else np.zeros(0, np.float32),
        loss=np.concatenate(parts["loss"]) if parts["loss"] else np.zeros(0, np.float32),
        margin=np.concatenate(parts["margin"]) if parts["margin"] else np.zeros(0, np.float32),
        predicted=prob.argmax(1) if len(prob) else np.zeros(0, np.int64),
        probabilities=prob,
    )


def detection_metrics(is_noisy: np.ndarray, suspicion: np.ndarray) -> dict[str, float]:
    """How well a suspicion score finds the flipped labels: AUROC, precision and recall at
    k = number of flipped labels (NaN when there are none, or nothing but flips)."""
    from sklearn.metrics import roc_auc_score

    is_noisy = np.asarray(is_noisy, bool)
    k = int(is_noisy.sum())
    if k == 0 or k == len(is_noisy):
        return {"auroc": math.nan, "precision_at_k": math.nan, "recall_at_k": math.nan, "k": k}
    top = np.argsort(-np.asarray(suspicion), kind="stable")[:k]
    hits = int(is_noisy[top].sum())
    return {
        "auroc": float(roc_auc_score(is_noisy, suspicion)),
        "precision_at_k": hits / k,
        "recall_at_k": hits / k,
        "k": k,
    }


def score_split(
    model: nn.Module,
    shards_uri: str,
    spec: TransformSpec,
    device: torch.device,
    columns: list[str],
    batch_size: int = 256,
    bfloat16: bool = False,
) -> tuple[Scores, pa.Table]:
    """Scores of every training row of ``shards_uri`` (eval transform ``spec``; ``bfloat16``:
    see ``score_batches``) and the ``columns`` read with them (``image`` and ``label`` among
    them)."""
    table = read_split(shards_uri, "train", columns)
    if table.num_rows == 0:
        raise ValueError(f"shards {shards_uri} have no training rows to audit")
    images = table["image"].to_pylist()
    labels = np.asarray(table["label"].to_pylist(), np.int64)

    def batches():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(eval_inputs(images[start : start + batch_size], spec))
            yield channels_last(x), torch.from_numpy(labels[start : start + batch_size])

    return score_batches(model, batches(), device, bfloat16), table


@dataclass
class AuditResult:
    rows: int
    suspected: int
    ranked_by: str
    """'trust' or 'loss'."""
    flipped: int | None
    """Known wrong labels in the split (embedded dataset), else None."""
    detection: dict[str, dict[str, float]]
    """Per score ('trust', 'loss'): AUROC, precision/recall at k; empty without the truth."""
    parquet: str
    contact_sheet: str
    summary: str

    def lines(self) -> list[str]:
        out = [
            f"[audit] {self.rows} training labels scored, ranked by {self.ranked_by}; "
            f"{self.suspected} suspected ({self.parquet})"
        ]
        for score, m in self.detection.items():
            out.append(
                f"[audit] finding the {self.flipped} flipped labels by {score}: "
                f"AUROC {m['auroc']:.3f}, precision@k {m['precision_at_k']:.3f} (k={m['k']})"
            )
        return out


def _rank_table(
    table: pa.Table, scores: Scores, class_names: list[str]
) -> tuple[pa.Table, np.ndarray]:
    suspicion = scores.suspicion()
    order = np.argsort(-suspicion, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    given = np.asarray(table["label"].to_pylist(), np.int64)
    by_trust = scores.trust < TRUST_THRESHOLD
    suspected = by_trust if scores.has_trust else scores.predicted != given
    columns = {
        "rank": rank,
        "id": table["id"],
        "source_path": table["source_path"],
        "given_label": [class_names[i] for i in given],
        "predicted_label": [class_names[i] for i in scores.predicted],
        "trust": scores.trust.astype(np.float32),
        "loss": scores.loss.astype(np.float32),
        "margin": scores.margin.astype(np.float32),
        "confidence": scores.probabilities.max(1).astype(np.float32),
        "suspected": suspected,
    }
    if "is_noisy" in table.column_names:
        columns["is_noisy"] = table["is_noisy"]
        columns["true_label"] = [class_names[i] for i in table["clean_label"].to_pylist()]
    out = pa.table(columns).take(pa.array(order))
    return out, order


def _contact_sheet(images: list[bytes], ranked: pa.Table, top: int = 64) -> bytes:
    n = min(top, ranked.num_rows)
    data = ranked.slice(0, n).to_pydict()
    wrong = data.get("is_noisy", [None] * n)
    tiles = []
    for i in range(n):
        trust = data["trust"][i]
        score = f"t={trust:.2f}" if trust == trust else f"loss={data['loss'][i]:.1f}"
        caption = [
            f"#{data['rank'][i]} {score}",
            f"given {data['given_label'][i]}",
            f"pred {data['predicted_label'][i]}",
        ]
        tiles.append(Tile(decode_image(images[i]), caption, "red" if wrong[i] else "black"))
    caption = f"Top {n} suspected labels (most suspect first)"
    if "is_noisy" in data:
        caption += "; red caption = the label really was flipped"
    return tile_sheet([tiles[i : i + 8] for i in range(0, max(n, 1), 8)], caption)


@contextmanager
def _local_copy(checkpoint: str) -> Iterator[str]:
    """A local folder for a checkpoint folder or URI (s3://, gs://: copied to a temp dir)."""
    if "://" not in checkpoint:
        if not Path(checkpoint).is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {checkpoint}")
        yield checkpoint
        return
    from pyarrow import fs as pafs

    with tempfile.TemporaryDirectory() as tmp:
        pafs.copy_files(checkpoint, tmp)
        yield tmp


def audit(
    checkpoint: str,
    shards_uri: str,
    out_uri: str,
    *,
    batch_size: int = 256,
    device: str | None = None,
    precision: str = "auto",
    echo: Callable[[str], None] | None = print,
) -> AuditResult:
    """Score every training row of ``shards_uri`` with the model in ``checkpoint``
    (``precision``: ``train.audit_precision``); write the ranked table, the contact sheet and
    the summary under ``out_uri``."""
    with _local_copy(checkpoint) as local:
        model, info = load_trust_model(local)
    manifest = read_manifest(shards_uri)
    if list(manifest.classes) != list(info.class_names):
        raise ValueError(
            f"shards {shards_uri} have classes {manifest.classes[:4]}..., the checkpoint "
            f"{checkpoint} was trained on {info.class_names[:4]}...: not the same label set"
        )
    columns = ["image", "label", "id", "source_path"]
    if manifest.has_truth:
        columns += ["clean_label", "is_noisy"]
    spec = eval_spec(info)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bfloat16 = torch_device.type == "cpu" and cpu_bfloat16(precision)
    scores, table = score_split(
        model, shards_uri, spec, torch_device, columns, batch_size, bfloat16
    )
    images = table["image"].to_pylist()
    ranked, order = _rank_table(table.drop_columns(["image"]), scores, list(info.class_names))
    detection: dict[str, dict[str, float]] = {}
    flipped = None
    if manifest.has_truth:
        is_noisy = np.asarray(table["is_noisy"].to_pylist(), bool)
        flipped = int(is_noisy.sum())
        if scores.has_trust:
            detection["trust"] = detection_metrics(is_noisy, 1.0 - scores.trust)
        detection["loss"] = detection_metrics(is_noisy, scores.loss)
        detection["margin"] = detection_metrics(is_noisy, -scores.margin)
    sink = pa.BufferOutputStream()
    pq.write_table(ranked, sink)
    parquet = join(out_uri, SUSPECTED_PARQUET)
    write_bytes(parquet, sink.getvalue().to_pybytes())
    sheet = join(out_uri, SUSPECTED_PNG)
    write_bytes(sheet, _contact_sheet([images[i] for i in order[:64]], ranked))
    result = AuditResult(
        rows=table.num_rows,
        suspected=int(np.asarray(ranked["suspected"]).sum()),
        ranked_by="trust" if scores.has_trust else "loss",
        flipped=flipped,
        detection=detection,
        parquet=parquet,
        contact_sheet=sheet,
        summary=join(out_uri, SUMMARY_JSON),
    )
    summary = {
        **asdict(result),
        "checkpoint": checkpoint,
        "shards": shards_uri,
        "precision": "bfloat16" if bfloat16 else "float32",
    }
    write_json(result.summary, summary)
    if echo:
        for line in result.lines():
            echo(line)
    return result


def _audit_with_threads(threads: int, *args, **kwargs) -> AuditResult:
    """``audit`` with ``threads`` torch threads (a reused Ray worker keeps the thread count of
    the task that started it)."""
    torch.set_num_threads(threads)
    return audit(*args, **kwargs)


def submit_audit(checkpoint, shards_uri, out_uri, num_cpus, num_gpus, batch_size, precision):
    """``audit`` started as a Ray task with ``num_cpus`` CPUs (as many torch threads) and
    ``num_gpus`` GPUs, so on a cluster it runs on a (GPU) worker node next to the checkpoint's
    storage, not on the head node: the Ray object reference of its ``AuditResult``."""
    import ray

    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_audit_with_threads)
    return task.remote(
        max(1, int(num_cpus)),
        checkpoint,
        shards_uri,
        out_uri,
        batch_size=batch_size,
        device="cuda" if num_gpus else "cpu",
        precision=precision,
        echo=None,
    )


# --- the pipeline's audit stage -------------------------------------------------------------


def audit_cpus(cfg: Config, side_by_side: bool = False) -> float:
    """CPUs of one audit task. On GPU a task takes one GPU and a worker's CPUs; on a fixed CPU
    cluster the largest node's CPUs up to 4 (its torch threads: 2 threads audit ~1.5x faster
    than 1 on a 2-core machine), or, ``side_by_side`` (the audit stage's several models), half
    of them, at least 1, so that two audits share a node: most of a small model's audit is
    single-threaded (the worker's start, decoding, the contact sheet, the parquet); with
    ``train.autoscale`` one worker's CPUs, which the node types are sized for."""
    import ray

    tc = cfg.train
    if tc.use_gpu or tc.autoscale:
        return min(tc.cpus_per_worker, 1.0)
    # one task runs on one node: the largest node's CPUs (a task asking for the cluster's
    # total would never be scheduled on a cluster of small nodes)
    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    largest = int(max(nodes, default=1.0))
    return max(1, min(largest // 2 if side_by_side else largest, 4))


def finished_audit(out_uri: str, checkpoint: str) -> AuditResult | None:
    """The audit in ``out_uri`` when one of ``checkpoint`` was finished there before (its
    summary is written last), else None."""
    uri = join(out_uri, SUMMARY_JSON)
    if not exists(uri):
        return None
    summary = read_json(uri)
    if summary.get("checkpoint") != checkpoint:
        return None
    return AuditResult(**{f.name: summary[f.name] for f in fields(AuditResult)})


def audit_model(
    cfg: Config, model, shards_uri: str, acted_on: bool = False, echo=print
) -> AuditResult:
    """The audit of one trained model (a ``train.BackboneResult``) on the shards it was trained
    on, as a Ray task, into ``cfg.layout.audit(backbone, round)``; one line per finding. An
    audit of the same checkpoint finished before is kept (a resumed run). ``acted_on``: a
    cleaning round acts on this audit (see ``audit_precision``)."""
    acted = {model.label} if acted_on else set()
    return audit_models(cfg, [model], shards_uri, acted, echo)[model.label]


def backbones_to_clean(cfg: Config, models: list) -> list[str]:
    """The backbones the cleaning round acts on: ``train.clean.backbones``, else the best on
    validation; none when ``train.clean.mode`` is none."""
    if cfg.train.clean.mode == "none" or not models:
        return []
    return cfg.train.clean.backbones or [max(models, key=lambda m: m.best_val_macro_f1).backbone]


def audit_precision(cfg: Config, backbone: str, acted_on: bool) -> str:
    """The precision of one audit: the backbone's ``train.audit_precision``, except that
    ``auto`` scores in float32 the audits a cleaning round acts on: their plan (which rows are
    dropped or relabelled) is then the float32 plan, and bfloat16 rounding changes no training
    data, only the ranked lists nobody trains on (docs/labels.md)."""
    precision = cfg.for_backbone(backbone).train.audit_precision
    return "float32" if precision == "auto" and acted_on else precision


def audit_stage(cfg: Config, shards_uri: str, models: list) -> dict[str, AuditResult]:
    """The ``audit`` stage: every trained model's audit (each a Ray task: on a cluster it runs
    on a worker node), by model label; ``<run>/audit/<backbone>/``."""
    cleaned = backbones_to_clean(cfg, models) if cfg.train.clean.rounds else []
    acted = {m.label for m in models if m.backbone in cleaned}
    return audit_models(cfg, models, shards_uri, acted)


def audit_models(
    cfg: Config, models: list, shards_uri: str, acted_on: set[str] = frozenset(), echo=print
) -> dict:
    """``models``' audits as Ray tasks started together, the largest input size first, each
    with ``audit_cpus`` (half a node when there are several, so that two run side by side:
    on 2 cores the quick run's six audits took 60 s instead of 70 one after another); their
    lines in ``models``' order, each with the seconds from the start to its end. Audits of the
    same checkpoints finished before are kept (a resumed run)."""
    import ray

    results, todo = {}, []
    for model in models:
        found = finished_audit(cfg.layout.audit(model.backbone, model.round), model.checkpoint)
        if found:
            results[model.label] = found
        else:
            todo.append(model)
    refs = {}
    if todo:
        init_ray()
        size = {m.label: cfg.for_backbone(m.backbone).model.image_size for m in todo}
        cpus = audit_cpus(cfg, side_by_side=len(todo) > 1)
        start = time.perf_counter()
        for model in sorted(todo, key=lambda m: -size[m.label]):
            refs[model.label] = submit_audit(
                model.checkpoint,
                shards_uri,
                cfg.layout.audit(model.backbone, model.round),
                cpus,
                min(cfg.train.gpus_per_worker, 1.0),
                cfg.train.eval_batch_size,
                audit_precision(cfg, model.backbone, model.label in acted_on),
            )
    for model in models:
        if model.label not in refs:
            echo(f"[audit] {model.label}: audited before ({results[model.label].summary}); kept")
            continue
        results[model.label] = ray.get(refs[model.label])
        lines = results[model.label].lines()
        since = " since the audits began" if len(refs) > 1 else ""
        lines[0] += f"  ({time.perf_counter() - start:.0f} s{since})"
        for line in lines:
            echo(line.replace("[audit]", f"[audit] {model.label}:", 1))
    return results
