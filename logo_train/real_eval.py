"""A real-photo score for every run: ``data.real_eval`` names an ImageFolder of real, labelled
badge crops (``<root>/<class>/*.jpg``), kept apart from the training data, and the benchmark
scores every backbone on it (top-1 and top-3 accuracy, per class) beside the test split.

Class folders are matched to the run's classes case-insensitively ('mercedes_benz',
'Mercedes-Benz' and 'mercedes benz' are one name); a folder that matches no class is counted and
listed, never silently skipped, and so is every file that cannot be read as an image. Images go
through the evaluation path itself (``augment.eval_inputs``): what the benchmark scores is what
``logo-train predict`` would see.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from logo_train.calibration import open_set_answer, open_set_summary, risk_coverage, softmax, thin
from logo_train.data.augment import TransformSpec, decode_image
from logo_train.data.ingest import IMAGE_EXTENSIONS, Reject, stored_bytes
from logo_train.engine import logits_of, scoring_model
from logo_train.figures import Tile, tile_sheet
from logo_train.metrics import classification_metrics

FIELD = "data.real_eval"


def class_key(name: str) -> str:
    """The form two class names are compared in: case-folded, '-', '_' and spaces alike."""
    return re.sub(r"[\s_\-]+", "-", name.strip()).casefold()


@dataclass
class RealSet:
    """The real photos that matched a class of the run, and what did not."""

    root: str
    classes: list[str]
    images: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    """Relative to ``root``."""
    unknown_classes: dict[str, int] = field(default_factory=dict)
    """Folder name -> files in it, for folders that match no class of the run."""
    rejected: list[dict[str, str]] = field(default_factory=list)
    """path, reason, detail for every file that is not a readable image."""

    def summary(self) -> dict:
        return {
            "root": self.root,
            "images": len(self.images),
            "classes_present": sorted({self.classes[i] for i in self.labels}),
            "unknown_classes": self.unknown_classes,
            "rejected": self.rejected,
        }

    def lines(self) -> list[str]:
        out = [
            f"[real] {self.root}: {len(self.images)} photos of "
            f"{len({*self.labels})} of the run's {len(self.classes)} classes"
        ]
        if self.unknown_classes:
            listed = ", ".join(f"{k} ({v})" for k, v in sorted(self.unknown_classes.items()))
            out.append(f"[real] folders that match no class, not scored: {listed}")
        if self.rejected:
            out.append(
                f"[real] {len(self.rejected)} file(s) not scored (not a readable image): "
                + ", ".join(f"{r['path']} ({r['reason']})" for r in self.rejected[:10])
                + (" ..." if len(self.rejected) > 10 else "")
            )
        return out


def load_real_set(
    root: str | Path, classes: Sequence[str], max_pixels: int = 40_000_000
) -> RealSet:
    """Read ``root/<class>/*`` for the run's ``classes``. Raises ``ValueError`` naming
    ``data.real_eval`` when the folder is missing or none of its folders is a class of the run."""
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"config field '{FIELD}' = {str(root)!r}: not a folder")
    by_key = {class_key(c): i for i, c in enumerate(classes)}
    real = RealSet(str(root), list(classes))
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        label = by_key.get(class_key(folder.name))
        if label is None:
            real.unknown_classes[folder.name] = len(files)
            continue
        for path in files:
            rel = path.relative_to(base).as_posix()
            data = _read_image(path, rel, max_pixels, real.rejected)
            if data is not None:
                real.images.append(data)
                real.labels.append(label)
                real.paths.append(rel)
    if not real.images:
        known = sorted(real.unknown_classes) or [p.name for p in folders]
        raise ValueError(
            f"config field '{FIELD}' = {str(root)!r}: no photo of a class of this run (its "
            f"folders: {known[:10]}; the run's classes: {list(classes)[:10]}...)"
        )
    return real


def _read_image(path: Path, rel: str, max_pixels: int, rejected: list) -> bytes | None:
    """The stored bytes of one photo (the ingest's checks), or None with the reason appended
    to ``rejected``."""

    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        rejected.append({"path": rel, "reason": "unsupported_extension", "detail": path.suffix})
        return None
    try:
        return stored_bytes(path.read_bytes(), max_pixels)
    except Reject as r:
        rejected.append({"path": rel, "reason": r.reason, "detail": r.detail})
    except OSError as e:
        rejected.append({"path": rel, "reason": "unreadable", "detail": str(e)})
    return None


def probabilities(model, images, spec, device, batch_size: int = 64, temperature: float = 1.0):
    """``softmax(logits / temperature)`` of every image, through the evaluation path."""

    logits = logits_of(scoring_model(model, device), images, spec, device, batch_size)
    return softmax(logits, temperature)


def score_real(
    model: nn.Module,
    real: RealSet,
    spec: TransformSpec,
    device: torch.device,
    batch_size: int = 64,
    *,
    temperature: float = 1.0,
    min_confidence: float = 0.0,
    unknown: int | None = None,
) -> dict:
    """Top-1 and top-3 accuracy and macro-F1 of ``model`` (a classifier) on the real photos,
    per class, and the mistakes (index, true class, top-3 predictions); with the open-set
    answer (``temperature``, ``min_confidence``, the ``unknown`` class: the benchmark fits them
    on validation) what share of the photos keeps an answer and of the right ones, and the
    risk-coverage curve."""

    p = probabilities(model, real.images, spec, device, batch_size, temperature)
    labels = np.asarray(real.labels, np.int64)
    k = min(3, p.shape[1])
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    hit1 = top[:, 0] == labels
    hit3 = (top == labels[:, None]).any(1)

    quality = classification_metrics(y_true=labels, y_pred=top[:, 0], num_classes=p.shape[1])
    return {
        "images": len(labels),
        "top1": float(hit1.mean()),
        # over the classes the photos hold: a photo called another of the run's classes costs
        # its class recall and that class precision
        "macro_f1": quality["macro_f1"],
        "top3": float(hit3.mean()),
        "chance": 1.0 / len(real.classes),
        "open_set": {
            "temperature": temperature,
            "min_confidence": min_confidence,
            **open_set_summary(p, labels, min_confidence, unknown),
        },
        "risk_coverage": thin(risk_coverage(p, labels)),
        "per_source": per_source(real.paths, labels, p, min_confidence, unknown),
        "per_class": [
            {
                "class": real.classes[c],
                "images": int((labels == c).sum()),
                "top1": float(hit1[labels == c].mean()),
                "top3": float(hit3[labels == c].mean()),
            }
            for c in sorted(set(real.labels))
        ],
        "mistakes": _mistakes(real, p, top, np.flatnonzero(~hit1)),
    }


def sources_of(paths: Sequence[str]) -> list[str]:
    """Where each real photo comes from, for the per-source scores: the subfolder of its class
    folder (``BMW/phone/x.jpg`` -> ``phone``), else its file name's prefix before ``_`` when
    files of two or more classes share it (``cctv_0001.jpg`` in every class folder -> ``cctv``:
    a camera or a site spans brands; a prefix of one class's files, ``Chevrolet_12.jpg``,
    ``IMG_0001.jpg``, is a naming habit), else ``photos``."""
    parts = [p.split("/") for p in paths]
    prefixes = []
    for part in parts:
        head, sep, _ = part[-1].partition("_")
        prefixes.append(head.casefold() if sep and head.isalpha() and len(part) == 2 else "")
    classes: dict[str, set[str]] = {}
    for part, prefix in zip(parts, prefixes, strict=True):
        classes.setdefault(prefix, set()).add(part[0])
    return [
        part[1] if len(part) > 2 else prefix if prefix and len(classes[prefix]) > 1 else "photos"
        for part, prefix in zip(parts, prefixes, strict=True)
    ]


def per_source(
    paths: Sequence[str], labels: np.ndarray, p: np.ndarray, min_confidence: float, unknown
) -> list[dict]:
    """Per source (``sources_of``): photos, top-1 before the open-set answer, right after it,
    and the share of the right top-1 answers it keeps."""
    sources = np.asarray(sources_of(paths))
    out = []
    for source in sorted(set(sources.tolist())):
        rows = sources == source
        summary = open_set_summary(p[rows], labels[rows], min_confidence, unknown)
        out.append({
            "source": source,
            "images": int(rows.sum()),
            "top1": float((p[rows].argmax(1) == labels[rows]).mean()),
            "after_open_set": summary["accuracy"],
            "right_kept": summary["right_kept"],
        })  # fmt: skip
    return out


def _mistakes(real: RealSet, p: np.ndarray, top: np.ndarray, wrong: np.ndarray) -> list[dict]:
    """The photos answered wrong: index, path, true class, top-k classes, top probability."""
    return [
        {
            "index": int(i),
            "path": real.paths[i],
            "true": real.classes[real.labels[i]],
            "predicted": [real.classes[j] for j in top[i]],
            "probability": float(p[i, top[i, 0]]),
        }
        for i in wrong
    ]


def mistakes_sheet(real: RealSet, result: dict, title: str, top: int = 48) -> bytes:
    """A PNG contact sheet of the first ``top`` mistakes: the photo, its class, the top-3."""
    shown = result["mistakes"][:top]
    tiles = [
        Tile(
            decode_image(real.images[m["index"]]),
            [f"true {m['true']}", *m["predicted"]],
            "darkred",
        )
        for m in shown
    ]
    return tile_sheet(
        [tiles[i : i + 8] for i in range(0, max(len(tiles), 1), 8)],
        f"{title}: {len(result['mistakes'])} of {result['images']} real photos wrong at top-1 "
        f"(top-1 {result['top1']:.2f}, top-3 {result['top3']:.2f}); first {len(shown)} shown",
        tile=112,
    )


@dataclass
class OutsideSet:
    """Real photos of brands that are none of the run's classes (``data.real_outside``): a
    model should answer ``unknown`` for each."""

    root: str
    images: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> dict:
        return {"root": self.root, "images": len(self.images), "rejected": self.rejected}

    def lines(self) -> list[str]:
        folders = {Path(p).parts[0] for p in self.paths if len(Path(p).parts) > 1}
        out = [
            f"[real] {self.root}: {len(self.images)} photos of no class of the run"
            + (f" ({len(folders)} folders)" if folders else "")
        ]
        if self.rejected:
            out.append(
                f"[real] {len(self.rejected)} file(s) there not scored (not a readable image)"
            )
        return out


OUTSIDE_FIELD = "data.real_outside"


def load_outside_set(root: str | Path, max_pixels: int = 40_000_000) -> OutsideSet:
    """Every image file under ``root`` (any layout); unreadable files are listed, not scored."""
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"config field '{OUTSIDE_FIELD}' = {str(root)!r}: not a folder")
    out = OutsideSet(str(root))
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = path.relative_to(base).as_posix()
        data = _read_image(path, rel, max_pixels, out.rejected)
        if data is not None:
            out.images.append(data)
            out.paths.append(rel)
    if not out.images:
        raise ValueError(f"config field '{OUTSIDE_FIELD}' = {str(root)!r}: no readable image")
    return out


def score_outside(
    model: nn.Module,
    outside: OutsideSet,
    spec: TransformSpec,
    device: torch.device,
    class_names: list[str],
    batch_size: int = 64,
    *,
    temperature: float = 1.0,
    min_confidence: float = 0.0,
    unknown: int | None = None,
) -> dict:
    """The share of the outside photos the open-set answer calls ``unknown`` (below the
    threshold, or the ``unknown`` class), per folder, and the classes named for the others."""
    from collections import Counter

    p = probabilities(model, outside.images, spec, device, batch_size, temperature)
    answer = open_set_answer(p, min_confidence, unknown)
    rejected = answer < 0
    folders: dict[str, list[bool]] = {}
    for path, r in zip(outside.paths, rejected, strict=True):
        parts = Path(path).parts
        folders.setdefault(parts[0] if len(parts) > 1 else ".", []).append(bool(r))
    named = Counter(class_names[a] for a in answer[~rejected])
    below = p.max(axis=1) < min_confidence
    return {
        "images": len(outside.images),
        "answered_unknown": float(rejected.mean()),
        "below_threshold": float(below.mean()),
        # the rest of the unknown answers: sure enough, but of the class unknown
        "unknown_class": float(((p.argmax(axis=1) == unknown) & ~below).mean())
        if unknown is not None
        else 0.0,
        "per_folder": {k: float(np.mean(v)) for k, v in sorted(folders.items())},
        "named_instead": dict(named.most_common(10)),
    }
