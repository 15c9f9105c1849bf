"""`logo-train predict` throughput against the benchmark's ONNX Runtime throughput, same model.

    python benchmarks/predict_throughput.py --model runs/quick/report/model [--images 3000]

Renders ``--images`` badge crops with the embedded generator at their native sizes (30-90 px
wide, as real crops are; a seed of its own, so none is a training image) into class folders,
runs ``predict`` over them (Ray Data read -> check -> eval transform -> ONNX Runtime actor ->
a CSV file gathered on the driver, and a folder of Parquet part files that Ray Data writes:
``--writes``) and times ONNX Runtime alone on ready-made input batches of the model's size, with as
many threads as the predict actor has CPUs. Prints and writes
``benchmarks/results/predict_throughput.json``: images/s of both and their ratio (issue 13's
target: predict >= 0.7x the bare model), and what predict printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from logo_train.config import BenchmarkConfig
from logo_train.data import badge, brands, synth
from logo_train.evaluate import speed
from logo_train.exported import MODEL_ONNX, onnx_session, resolve_model
from logo_train.predict import predict

ROOT = Path(__file__).resolve().parents[1]


def render_native_crops(folder: Path, n: int, seed: int = 20261126) -> None:
    """``n`` crops, class-balanced, each at its own size (30-90 px), PNG, in <class>/ folders."""
    rng = np.random.default_rng(seed)
    templates = synth.templates()
    for i in range(n):
        name = brands.CLASS_NAMES[i % len(brands.CLASS_NAMES)]
        slugs = brands.class_slugs(name)
        mask, rgb = templates[slugs[rng.integers(len(slugs))]]
        size = int(rng.integers(30, 91))
        pixels, quality = badge.compose_badge(
            mask, rgb, size=size, difficulty=0.5, min_crop_px=size, max_crop_px=size, rng=rng
        )
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / f"{i:05d}.png").write_bytes(badge.encode_image(pixels, "png", quality))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=str(ROOT / "runs/quick/report/model"))
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--actors", type=int, default=1, help="0: sized to the cluster")
    p.add_argument(
        "--writes",
        default="file,folder",
        help="file (one CSV, gathered on the driver), folder (Ray Data's part files): each run",
    )
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/predict_throughput.json"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        crops = Path(tmp) / "crops"
        start = time.perf_counter()
        render_native_crops(crops, args.images)
        print(f"rendered {args.images} crops (30-90 px) in {time.perf_counter() - start:.1f} s")
        lines: list[str] = []

        def echo(line: str) -> None:
            print(line)
            lines.append(line)

        runs = {}
        for write in args.writes.split(","):
            out = Path(tmp) / ("preds.csv" if write == "file" else "preds")
            start = time.perf_counter()
            summary = predict(
                args.model,
                [str(crops)],
                out if write == "file" else f"file://{out}",
                actors=args.actors,
                cpus_per_actor=args.cpus_per_actor,
                batch_size=args.batch_size,
                progress=False,
                echo=echo,
            )
            runs[write] = (summary, time.perf_counter() - start)
        resolved = resolve_model(args.model, tmp)
        actors = max(r.actors_used for r, _ in runs.values())
        threads = actors * max(1, int(args.cpus_per_actor))  # as many as predict runs
        session = onnx_session(Path(resolved.onnx_dir) / MODEL_ONNX, threads)
        cfg = BenchmarkConfig(throughput_batch=args.batch_size, throughput_runs=20)
        bare = speed(
            lambda x: session.run(["logits"], {"image": x}), resolved.meta.image_size, cfg
        )["throughput_images_per_s"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {threads} thread(s)",
        "model": resolved.described_as,
        "backbone": resolved.meta.backbone,
        "images": args.images,
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "onnx_images_per_s": bare,
        "writes": {
            write: {
                "written_by": summary.written_by,
                "predict_images_per_s": summary.images_per_s,
                "predict_wall_s_including_start": wall,
                "ratio": summary.images_per_s / bare,
                "actors_used": summary.actors_used,
                "accuracy": summary.metrics.get("accuracy"),
                "macro_f1": summary.metrics.get("macro_f1"),
            }
            for write, (summary, wall) in runs.items()
        },
        "printed": lines,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for write, r in result["writes"].items():
        print(
            f"predict, {write} written by the {r['written_by']}: "
            f"{r['predict_images_per_s']:.0f} images/s (streaming, after start-up; "
            f"{r['predict_wall_s_including_start']:.1f} s wall with start-up) vs ONNX Runtime "
            f"alone {bare:.0f} images/s at batch {args.batch_size}: ratio {r['ratio']:.2f}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
