"""Ingest a user's ImageFolder tree into Parquet shards, checking every file.

Two layouts: ``root/{train,val,test}/<class>/*`` (a missing val or test split is carved out of
train, stratified) or ``root/<class>/*`` split stratified by ratio. Every file under the root is
either written as a row or rejected with a reason code; ``files_seen == rows + rejected`` holds
for every ingest. Colour modes (grayscale, CMYK, RGBA, palette, 16-bit) and EXIF rotation are
converted to plain RGB; images already stored as 8-bit RGB JPEG/PNG keep their original bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from logo_train.config import IngestConfig
from logo_train.data.parallel import map_chunks
from logo_train.data.shards import (
    SPLITS,
    Manifest,
    prepare_output,
    write_manifest,
    write_splits,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
KEEP_FORMATS = frozenset({"JPEG", "PNG"})
_EXIF_ORIENTATION = 0x0112


class IngestError(ValueError):
    """A structural problem with the source tree: nothing sensible can be ingested."""


@dataclass
class FileEntry:
    rel: str
    """Path relative to the root, with '/' separators."""
    split: str | None
    class_name: str | None
    problem: str = ""
    """A reason code found while scanning (the file sits outside the expected folders)."""


@dataclass
class Checked:
    entry: FileEntry
    reason: str = ""
    """Empty when the file is accepted, else a reason code."""
    detail: str = ""
    sha256: str = ""
    conversions: list[str] = field(default_factory=list)


@dataclass
class Rejection:
    path: str
    split: str
    class_name: str
    reason: str
    detail: str


# --- scanning ---------------------------------------------------------------------------------


def _files_under(path: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        out += [Path(dirpath) / f for f in sorted(filenames)]
    return out


def scan(root: Path, layout: str) -> tuple[str, list[FileEntry], list[dict[str, str]]]:
    """Every file under ``root`` with its split and class (None where it sits outside one)."""
    if not root.exists():
        raise IngestError(f"ImageFolder root not found: {root}")
    if not root.is_dir():
        raise IngestError(f"ImageFolder root is not a folder: {root}")
    if layout == "auto":
        layout = "splits" if (root / "train").is_dir() else "single"
    if layout == "splits" and not (root / "train").is_dir():
        raise IngestError(f"layout 'splits' needs {root / 'train'}/<class>/ folders")

    entries: list[FileEntry] = []
    skipped: list[dict[str, str]] = []
    class_dirs = 0

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def add_class_tree(base: Path, split: str | None) -> None:
        nonlocal class_dirs
        for child in sorted(base.iterdir()):
            if child.is_dir() and not child.is_symlink():
                class_dirs += 1
                files = _files_under(child)
                if not files:
                    skipped.append(
                        {"class": child.name, "split": split or "", "reason": "empty class folder"}
                    )
                entries.extend(FileEntry(rel(f), split, child.name) for f in files)
            else:  # a loose file (or a link) beside the class folders
                entries.append(FileEntry(rel(child), split, None))

    if layout == "splits":
        for child in sorted(root.iterdir()):
            if child.name in SPLITS and child.is_dir():
                add_class_tree(child, child.name)
            elif child.is_dir():
                outside = _files_under(child)
                entries.extend(
                    FileEntry(rel(f), None, None, "outside_split_folder") for f in outside
                )
            else:
                entries.append(FileEntry(rel(child), None, None, "outside_split_folder"))
    else:
        add_class_tree(root, None)
    if class_dirs == 0:
        raise IngestError(
            f"no class folders under {root}: expected {root}/<class>/*.jpg "
            f"or {root}/train/<class>/*.jpg"
        )
    return layout, entries, skipped


# --- checking one file ------------------------------------------------------------------------


def _png_bit_depth(data: bytes) -> int:
    return data[24] if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 else 8


def to_rgb(img: Image.Image, data: bytes) -> tuple[Image.Image, list[str]]:
    """Plain 8-bit RGB, upright; the list names each conversion made."""
    conversions = []
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
        conversions.append("exif_rotation")
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit grayscale
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if mode.startswith("I") and arr.max() > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8)).convert("RGB")
        conversions.append(f"{mode}->RGB")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
        conversions.append(f"{mode}->RGB(alpha on white)")
    elif mode != "RGB":
        img = img.convert("RGB")
        conversions.append(f"{mode}->RGB")
    elif _png_bit_depth(data) == 16:
        conversions.append("RGB16->RGB8")
    return img, conversions


def decode(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open and fully decode; raises ``Reject`` with a reason code."""
    try:
        with warnings.catch_warnings():
            # we enforce our own pixel limit below, PIL's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or ""
            width, height = img.size
            if width * height > max_pixels:
                raise Reject("too_large", f"{width}x{height} px is over max_pixels {max_pixels}")
            img.load()
    except Reject:
        raise
    except Image.DecompressionBombError as e:
        raise Reject("too_large", str(e)) from e
    except UnidentifiedImageError as e:
        raise Reject("not_an_image", "not a decodable image (wrong extension?)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise Reject("corrupt", f"truncated or corrupt: {e}") from e
    return img, fmt


class Reject(Exception):
    """A file that cannot become a row: ``reason`` (a code) and ``detail`` (for people)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise Reject("unreadable", f"{type(e).__name__}: {e.strerror or e}") from e


def _plain_rgb(data: bytes, max_pixels: int) -> bool:
    """From the header and the end of the file alone: an 8-bit RGB PNG / JPEG, upright, that
    ends where its format says (a truncated file does not), within ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return False  # the full decode says why
    if img.mode != "RGB" or img.size[0] * img.size[1] > max_pixels:
        return False
    if img.format == "PNG":
        return _png_bit_depth(data) == 8 and data[-8:-4] == b"IEND"
    if img.format == "JPEG":
        return data.endswith(b"\xff\xd9") and img.getexif().get(_EXIF_ORIENTATION, 1) == 1
    return False


def stored_bytes(data: bytes, max_pixels: int, full_decode: bool = True) -> bytes:
    """What a shard stores for an image file's bytes: the original when it is 8-bit RGB JPEG or
    PNG, else a PNG of its plain-RGB, upright conversion. Raises ``Reject``. Prediction on files
    goes through this, so a file is seen exactly as its ingested row would be.

    ``full_decode=False`` (prediction: its decoder runs next anyway) keeps a plain RGB PNG/JPEG
    that is whole by its header and end marker without decoding it here (~4x faster);
    everything else takes the full decode, which rejects what is truncated or corrupt."""
    if not data:
        raise Reject("empty_file", "zero bytes")
    if not full_decode and _plain_rgb(data, max_pixels):
        return data
    img, fmt = decode(data, max_pixels)
    rgb, conversions = to_rgb(img, data)
    if not conversions and fmt in KEEP_FORMATS:
        return data
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def check_file(root: Path, entry: FileEntry, max_pixels: int) -> Checked:
    """Decide whether one file becomes a row, and which conversions it needs."""
    path = root / entry.rel
    if entry.problem == "outside_split_folder":
        return Checked(entry, entry.problem, "not under train/, val/ or test/")
    if entry.class_name is None:
        return Checked(entry, "outside_class_folder", "files must sit in a <class>/ folder")
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return Checked(entry, "unsupported_extension", f"extension {path.suffix!r} is not an image")
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        return Checked(entry, "outside_root", f"a link to {path.resolve()}, outside {root}")
    try:
        data = _read(path)
        if not data:
            raise Reject("empty_file", "zero bytes")
        img, fmt = decode(data, max_pixels)
        _, conversions = to_rgb(img, data)
    except Reject as r:
        return Checked(entry, r.reason, r.detail)
    if fmt not in KEEP_FORMATS:
        conversions.append(f"{fmt}->PNG")
    return Checked(entry, sha256=hashlib.sha256(data).hexdigest(), conversions=conversions)


def load_row_bytes(root: Path, checked: Checked, max_pixels: int) -> bytes:
    """The bytes stored for an accepted file: original, or re-encoded PNG after conversions."""
    data = (root / checked.entry.rel).read_bytes()
    if hashlib.sha256(data).hexdigest() != checked.sha256:
        raise RuntimeError(f"{root / checked.entry.rel} changed while it was being ingested")
    return stored_bytes(data, max_pixels)


# --- the whole tree ---------------------------------------------------------------------------


def stratified_split(
    items: list[Checked], fractions: dict[str, float], seed: int
) -> dict[int, str]:
    """Index -> split for items of the train split, per class, keeping >= 1 in train."""
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(items):
        by_class.setdefault(c.entry.class_name or "", []).append(i)
    out: dict[int, str] = {}
    for k, name in enumerate(sorted(by_class)):
        idx = by_class[name]
        order = np.random.default_rng([seed, k]).permutation(len(idx))
        n = len(idx)
        quota = {s: int(round(f * n)) for s, f in fractions.items()}
        while n - sum(quota.values()) < 1 and any(quota.values()):
            biggest = max(quota, key=lambda s: quota[s])
            quota[biggest] -= 1
        pos = 0
        for split in ("test", "val"):
            for j in order[pos : pos + quota.get(split, 0)]:
                out[idx[j]] = split
            pos += quota.get(split, 0)
        for j in order[pos:]:
            out[idx[j]] = "train"
    return out


def _check_chunk(entries: list[FileEntry], root: str, max_pixels: int) -> list[Checked]:
    return [check_file(Path(root), e, max_pixels) for e in entries]


def _load_chunk(items: list[Checked], root: str, max_pixels: int) -> list[bytes]:
    return [load_row_bytes(Path(root), c, max_pixels) for c in items]


def ingest(
    src: str | Path,
    uri: str,
    cfg: IngestConfig,
    *,
    rows_per_shard: int = 1000,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Manifest:
    """Check every file under ``src`` and write the accepted ones as shards under ``uri``."""
    root = Path(src).resolve()
    layout, entries, skipped = scan(root, cfg.layout)
    workers = workers or os.cpu_count() or 1
    pool = {"workers": workers, "unit": "file", "progress": progress}
    checked = list(
        map_chunks(_check_chunk, entries, str(root), cfg.max_pixels, desc="checking", **pool)
    )
    rejected: list[Rejection] = []

    def reject(c: Checked, reason: str, detail: str) -> None:
        e = c.entry
        rejected.append(Rejection(e.rel, e.split or "", e.class_name or "", reason, detail))

    for c in checked:
        if c.reason:
            reject(c, c.reason, c.detail)
    ok = [c for c in checked if not c.reason]
    unique = _first_of_each(ok, reject)
    split_of = _splits(unique, layout, cfg)
    classes = sorted({c.entry.class_name for c in unique if split_of[id(c)] == "train"})
    rows_in = [c for c in unique if c.entry.class_name in classes]
    for c in unique:
        if c.entry.class_name not in classes:
            reject(c, "class_not_in_train", f"class {c.entry.class_name!r} has no training image")
    if not rows_in:
        raise IngestError(
            f"no readable images under {root}: {len(entries)} files seen, all rejected "
            f"({dict(Counter(r.reason for r in rejected))})"
        )
    # Rows shuffled within each split so shards mix classes.
    order = np.random.default_rng([cfg.seed, 99]).permutation(len(rows_in))
    rows_in = [rows_in[i] for i in order]
    prepare_output(uri, overwrite)
    files, counts, converted, n_rows = _write_rows(
        uri, root, rows_in, split_of, classes, cfg, pool, rows_per_shard
    )
    if len(entries) != n_rows + len(rejected):  # the ingest's own invariant: nothing lost
        raise RuntimeError(
            f"ingest lost files: seen {len(entries)} != rows {n_rows} + rejected {len(rejected)}"
        )
    manifest = Manifest(
        source=str(root),
        classes=classes,
        counts=counts,
        files=files,
        params={"ingest": "logo_train.data.ingest", **asdict(cfg), "detected_layout": layout},
        has_truth=False,
        files_seen=len(entries),
        rejected=[asdict(r) for r in sorted(rejected, key=lambda r: r.path)],
        skipped_classes=skipped,
        converted=dict(converted),
    )
    write_manifest(uri, manifest)
    log.info("ingested %d of %d files from %s into %s", n_rows, len(entries), root, uri)
    return manifest


def _first_of_each(ok: list[Checked], reject) -> list[Checked]:
    """Same bytes twice: keep the first (train before val before test), reject the others."""
    split_rank = {"train": 0, "val": 1, "test": 2, None: 0}
    ok.sort(key=lambda c: (split_rank[c.entry.split], c.entry.rel))
    first: dict[str, Checked] = {}
    unique: list[Checked] = []
    for c in ok:
        if c.sha256 in first:
            orig = first[c.sha256].entry
            leak = " across splits (leakage)" if orig.split != c.entry.split else ""
            reject(c, "duplicate", f"same bytes as {orig.rel}{leak}")
        else:
            first[c.sha256] = c
            unique.append(c)
    return unique


def _splits(unique: list[Checked], layout: str, cfg: IngestConfig) -> dict[int, str]:
    """Each file's split (by ``id`` of its ``Checked``): as given, and what is missing carved
    out of train (stratified, ``cfg.val_fraction`` / ``cfg.test_fraction``)."""
    present = {c.entry.split for c in unique} if layout == "splits" else set()
    fractions = {}
    if "val" not in present:
        fractions["val"] = cfg.val_fraction
    if "test" not in present:
        fractions["test"] = cfg.test_fraction
    train_items = [c for c in unique if c.entry.split in (None, "train")]
    carved = stratified_split(train_items, fractions, cfg.seed)
    assigned = {id(c): carved[i] for i, c in enumerate(train_items)}
    return {id(c): assigned.get(id(c), c.entry.split) for c in unique}


def _write_rows(uri, root: Path, rows_in, split_of, classes, cfg, pool, rows_per_shard):
    """The accepted files, converted, as shards: (files per split, rows per split and class,
    conversions counted, rows written)."""
    label_of = {name: i for i, name in enumerate(classes)}
    counts = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    converted: Counter[str] = Counter()

    def rows() -> Iterator[dict]:
        images = map_chunks(_load_chunk, rows_in, str(root), cfg.max_pixels, desc="writing", **pool)
        for c, image in zip(rows_in, images, strict=True):
            split = split_of[id(c)]
            counts[split][c.entry.class_name] += 1
            converted.update(c.conversions)
            yield {
                "image": image,
                "label": label_of[c.entry.class_name],
                "label_name": c.entry.class_name,
                "id": c.entry.rel,
                "split": split,
                "source_path": c.entry.rel,
            }

    files, written = write_splits(uri, rows(), with_truth=False, rows_per_shard=rows_per_shard)
    return files, counts, converted, sum(written.values())
