"""What a person looks at after writing shards: a summary table and a contact sheet."""

from __future__ import annotations

from collections import Counter

from logo_train.data.augment import decode_image
from logo_train.data.shards import SPLITS, Manifest, iter_batches
from logo_train.figures import Tile, tile_sheet
from logo_train.storage import join, write_bytes

CONTACT_SHEET = "contact_sheet.png"


def summary_table(manifest: Manifest, max_rejected: int = 20) -> str:
    """Classes x splits counts, imbalance, noise and every kind of rejected input."""
    width = max(len("class"), *(len(c) for c in manifest.classes))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS)]
    lines.append("-" * len(lines[0]))
    for name in manifest.classes:
        cells = "  ".join(f"{manifest.counts.get(s, {}).get(name, 0):>6}" for s in SPLITS)
        lines.append(f"{name:<{width}}  {cells}")
    lines.append("-" * len(lines[0]))
    totals = "  ".join(f"{manifest.split_rows(s):>6}" for s in SPLITS)
    lines.append(f"{'total':<{width}}  {totals}")
    lines.append("")
    lines.append(f"classes: {len(manifest.classes)}   rows: {manifest.rows}")
    ratio = f"imbalance ratio (train, largest/smallest class): {manifest.imbalance_ratio():.2f}"
    if manifest.has_truth:
        ratio += f" by given labels, {manifest.imbalance_ratio(truth=True):.2f} by true labels"
    lines.append(ratio)
    if manifest.has_truth:
        noisy_splits = ("train", "val") if manifest.params.get("noisy_val") else ("train",)
        for split in noisy_splits:
            rate = manifest.noise_rate(split)
            if rate is not None:
                noisy = manifest.noisy_counts.get(split, 0)
                kind = manifest.params.get("noise_kind", "")
                lines.append(
                    f"label noise ({split}): {100 * rate:.1f}% "
                    f"({noisy} of {manifest.split_rows(split)} labels wrong, {kind})"
                )
    else:
        lines.append("label noise: unknown (user data; see the label audit after training)")
    lines.append(
        f"files seen: {manifest.files_seen}   rows written: {manifest.rows}   "
        f"rejected: {len(manifest.rejected)}"
    )
    if manifest.converted:
        conv = ", ".join(f"{k}: {v}" for k, v in sorted(manifest.converted.items()))
        lines.append(f"converted: {conv}")
    for skipped in manifest.skipped_classes:
        where = f"{skipped['split']}/" if skipped.get("split") else ""
        lines.append(f"skipped class folder {where}{skipped['class']}: {skipped['reason']}")
    if manifest.rejected:
        reasons = Counter(r["reason"] for r in manifest.rejected)
        lines.append("rejected by reason: " + ", ".join(f"{k}: {v}" for k, v in reasons.items()))
        for r in manifest.rejected[:max_rejected]:
            lines.append(f"  - {r['path']}: {r['reason']} ({r['detail']})")
        if len(manifest.rejected) > max_rejected:
            more = len(manifest.rejected) - max_rejected
            lines.append(f"  ... {more} more, all listed in manifest.json")
    return "\n".join(lines)


def contact_sheet(uri: str, manifest: Manifest, per_class: int = 6, split: str = "train") -> str:
    """A PNG grid, one row per class, the first ``per_class`` images; wrong labels framed red."""
    columns = ["image", "label"] + (["clean_label"] if manifest.has_truth else [])
    picked: dict[int, list[tuple[bytes, int | None]]] = {
        i: [] for i in range(len(manifest.classes))
    }
    for batch in iter_batches(uri, split, columns=columns):
        data = batch.to_pydict()
        truth = data.get("clean_label", [None] * len(data["label"]))
        for image, label, clean in zip(data["image"], data["label"], truth, strict=True):
            if len(picked[label]) < per_class:
                picked[label].append((image, clean))
        if all(len(v) >= per_class for v in picked.values()):
            break

    rows = []
    for label in range(len(manifest.classes)):
        row = []
        for image, clean in picked[label]:
            wrong = clean is not None and clean != label
            caption = [f"true: {manifest.classes[clean]}"] if wrong else []
            row.append(Tile(decode_image(image), caption, "red", "red" if wrong else None))
        rows.append(row)
    title = f"{split} split, first {per_class} images per given label"
    if manifest.has_truth:
        title += " (red frame: wrong label, true class above)"
    sheet = tile_sheet(rows, title, tile=64, row_labels=manifest.classes, caption_lines=1)
    out = join(uri, CONTACT_SHEET)
    write_bytes(out, sheet)
    return out
