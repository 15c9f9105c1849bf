"""Data-layer speed: render the quick profile's dataset, ingest an ImageFolder of JPEGs.

Also a separability probe: a linear classifier on raw pixels, trained on clean labels, at three
difficulty levels, to show the embedded task is not trivially separable.

    python benchmarks/bench_data.py [--out benchmarks/results] [--ingest-images 3000]

Writes ``data.json`` and ``data.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from logo_train.config import IngestConfig, load_config
from logo_train.data import ingest, synth
from logo_train.data.augment import decode_image
from logo_train.data.shards import read_split

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    from logo_train.evaluate import cpu_model

    cpu = cpu_model()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM"


def bench_generation(tmp: Path) -> dict:
    cfg = load_config(ROOT / "configs/quick.yaml")
    start = time.perf_counter()
    manifest = synth.generate(cfg.data.synth, str(tmp / "quick"), progress=False)
    seconds = time.perf_counter() - start
    return {
        "images": manifest.rows,
        "image_size": cfg.data.synth.image_size,
        "seconds": round(seconds, 2),
        "images_per_s": round(manifest.rows / seconds, 1),
    }


def bench_ingest(tmp: Path, n_images: int) -> dict:
    """Write ``n_images`` JPEGs (128 px badge renders) as an ImageFolder, then ingest it."""
    cfg = load_config(None).data.synth
    per_class = max(1, n_images // 28)
    cfg = replace(
        cfg,
        image_size=128,
        images_per_class=per_class,
        imbalance_ratio=1.0,
        val_per_class=0,
        test_per_class=0,
        noise_rate=0.0,
        image_format="jpeg",
    )
    src = tmp / "folder"
    for row in synth.iter_rows(cfg, progress=False):
        path = src / row["label_name"] / f"{row['id']}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(row["image"])
    start = time.perf_counter()
    manifest = ingest.ingest(src, str(tmp / "ingested"), IngestConfig(), progress=False)
    seconds = time.perf_counter() - start
    return {
        "files": manifest.files_seen,
        "rows": manifest.rows,
        "rejected": len(manifest.rejected),
        "image_size": 128,
        "seconds": round(seconds, 2),
        "images_per_s": round(manifest.files_seen / seconds, 1),
    }


def separability_probe(tmp: Path) -> list[dict]:
    """Clean-label logistic regression on 32x32 pixels: test accuracy per difficulty."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    out = []
    for difficulty in (0.0, 0.5, 1.0):
        cfg = replace(
            load_config(None).data.synth,
            image_size=32,
            images_per_class=150,
            imbalance_ratio=1.0,
            val_per_class=0,
            test_per_class=40,
            noise_rate=0.0,
            difficulty=difficulty,
        )
        uri = str(tmp / f"probe-{difficulty}")
        synth.generate(cfg, uri, progress=False)

        def xy(split, uri=uri):
            t = read_split(uri, split, ["image", "label"])
            x = np.stack([decode_image(b).reshape(-1) for b in t["image"].to_pylist()])
            return x.astype(np.float32) / 255.0, np.asarray(t["label"].to_pylist())

        (xtr, ytr), (xte, yte) = xy("train"), xy("test")
        scaler = StandardScaler().fit(xtr)
        clf = LogisticRegression(max_iter=300, C=0.05).fit(scaler.transform(xtr), ytr)
        acc = float((clf.predict(scaler.transform(xte)) == yte).mean())
        out.append({"difficulty": difficulty, "train_images": len(ytr), "test_accuracy": acc})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--ingest-images", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        result = {
            "machine": machine(),
            "generation_quick_profile": bench_generation(tmp_path),
            "ingest_imagefolder_jpeg": bench_ingest(tmp_path, args.ingest_images),
            "separability_probe_logreg_pixels": separability_probe(tmp_path),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(result, indent=2))
    g, i = result["generation_quick_profile"], result["ingest_imagefolder_jpeg"]
    lines = [
        f"Machine: {result['machine']}",
        "",
        "| measurement | images | seconds | images/s |",
        "|---|---|---|---|",
        f"| generate quick profile ({g['image_size']} px, PNG) | {g['images']} | {g['seconds']} "
        f"| {g['images_per_s']} |",
        f"| ingest ImageFolder ({i['image_size']} px JPEG) | {i['files']} | {i['seconds']} "
        f"| {i['images_per_s']} |",
        "",
        "| difficulty | logistic regression on 32x32 pixels, clean test accuracy (28 classes) |",
        "|---|---|",
        *(
            f"| {p['difficulty']} | {p['test_accuracy']:.3f} "
            f"({p['train_images']} clean training images) |"
            for p in result["separability_probe_logreg_pixels"]
        ),
    ]
    (out / "data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
