"""Ray Data + Ray Train against a plain single-process PyTorch loop, same model and transforms.

    python benchmarks/bench_train.py [--backbone resnet10t] [--epochs 4] [--out benchmarks/results]

Both run the same model, loss, step and epoch loop (``logo_train.engine.fit``; with the quick
profile's ``trust_penalty``, the trust head too) on the quick profile's data for ``--epochs``
epochs at the quick batch size and report training images/s (the train phase of each epoch,
validation excluded) and the share of that time spent waiting for the next batch. Threads in
total are the same: Ray runs 2 DDP workers with 1 torch thread each and leaves 1 CPU to Ray
Data; the plain loop runs 2 torch threads and 1 DataLoader worker process. The first epoch
carries process start-up on both sides, so the steady state is epochs 2..N; both numbers are
written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from logo_train.config import Config, load_config
from logo_train.data.prepare import prepare_data
from logo_train.data.shards import Manifest
from logo_train.local import fit_local

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(cfg: Config, backbone: str, uri: str, manifest: Manifest) -> list[dict]:
    """The same epoch loop as a Ray worker (``engine.fit`` via ``fit_local``), fed by a
    DataLoader with one worker process that decodes every epoch, as Ray Data does; validated
    at the end only (outside the timed train phase either way)."""
    torch.set_num_threads(2)
    fit = fit_local(
        cfg,
        backbone,
        uri,
        manifest,
        device="cpu",
        loader_workers=1,
        eval_every=cfg.train.epochs,
        decode_once=False,
    )
    return fit.history


def ray_loop(cfg: Config, backbone: str, uri: str, manifest: Manifest) -> tuple[list[dict], float]:
    import ray

    from logo_train.checkpoint import run_history
    from logo_train.train import train_backbone

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    start = time.perf_counter()
    result = train_backbone(cfg, backbone, uri, manifest)
    seconds = time.perf_counter() - start
    history = [
        {k: h[k] for k in ("epoch", "train_images_per_s", "data_wait_fraction", "epoch_seconds")}
        for h in run_history(result.run_path)
    ]
    ray.shutdown()
    return history, seconds


def _summary(history: list[dict]) -> dict:
    steady = history[1:] or history
    return {
        "all_epochs_images_per_s": float(np.mean([h["train_images_per_s"] for h in history])),
        "steady_images_per_s": float(np.mean([h["train_images_per_s"] for h in steady])),
        "steady_data_wait_fraction": float(np.mean([h["data_wait_fraction"] for h in steady])),
        "first_epoch_data_wait_fraction": float(history[0]["data_wait_fraction"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--run-dir", default="/tmp/logo-train-bench")
    args = parser.parse_args()
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [f"output_dir={args.run_dir}", f"train.epochs={args.epochs}", "name=bench"],
    )
    uri, manifest, _ = prepare_data(cfg, progress=False)
    plain = plain_loop(cfg, args.backbone, uri, manifest)
    ray_history, ray_seconds = ray_loop(cfg, args.backbone, uri, manifest)
    result = {
        "backbone": args.backbone,
        "epochs": args.epochs,
        "train_images": manifest.split_rows("train"),
        "image_size": cfg.model.image_size,
        "batch_size": cfg.train.batch_size,
        "plain_pytorch": {"history": plain, **_summary(plain)},
        "ray": {"history": ray_history, "fit_seconds": ray_seconds, **_summary(ray_history)},
    }
    p, r = result["plain_pytorch"], result["ray"]
    result["ray_over_plain_steady"] = r["steady_images_per_s"] / p["steady_images_per_s"]
    result["ray_over_plain_all_epochs"] = (
        r["all_epochs_images_per_s"] / p["all_epochs_images_per_s"]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"{args.backbone}, {result['train_images']} train images at {result['image_size']} px, "
        f"batch {result['batch_size']}, {args.epochs} epochs",
        "",
        "| loop | img/s (epochs 2..N) | img/s (all epochs) | data wait (epochs 2..N) "
        "| data wait (epoch 1) |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {s['steady_images_per_s']:.0f} | {s['all_epochs_images_per_s']:.0f} "
            f"| {100 * s['steady_data_wait_fraction']:.1f}% "
            f"| {100 * s['first_epoch_data_wait_fraction']:.1f}% |"
            for name, s in (("plain PyTorch (DataLoader)", p), ("Ray Data + Ray Train", r))
        ),
        "",
        f"Ray / plain throughput: {result['ray_over_plain_steady']:.2f} (epochs 2..N), "
        f"{result['ray_over_plain_all_epochs']:.2f} (all epochs)",
    ]
    (out / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
