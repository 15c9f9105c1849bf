"""What a person looks at after writing shards: a summary table and a contact sheet."""

from __future__ import annotations

from collections import Counter

from logo_train.data.augment import decode_image
from logo_train.data.shards import SPLITS, Manifest, iter_batches
from logo_train.figures import png_bytes, pyplot
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
    plt = pyplot()
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

    n_rows = len(manifest.classes)
    height = 1.1 * n_rows + 0.5
    fig, axes = plt.subplots(
        n_rows, per_class, figsize=(1.1 * per_class + 1.6, height), squeeze=False
    )
    for row, name in enumerate(manifest.classes):
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(picked[row]):
                image, clean = picked[row][col]
                ax.imshow(decode_image(image))
                if clean is not None and clean != row:
                    for spine in ax.spines.values():
                        spine.set_visible(True)
                        spine.set_color("red")
                        spine.set_linewidth(2.5)
                    ax.set_title(f"true: {manifest.classes[clean]}", fontsize=6, color="red")
            if col == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    title = f"{split} split, first {per_class} images per given label"
    if manifest.has_truth:
        title += " (red frame: wrong label, true class above)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    out = join(uri, CONTACT_SHEET)
    write_bytes(out, png_bytes(fig))
    return out
