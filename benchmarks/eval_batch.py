"""Scoring speed (eval mode, no gradients) by memory layout and batch size: what the audit,
the benchmark, validation and the real-photo scores pay per image (``engine.scoring_model``,
``train.eval_batch_size``).

    python benchmarks/eval_batch.py [--backbones efficientnet_lite0 resnet10t ...]
                                    [--batches 16 32 64 128 256] [--images 512] [--threads 2]

Each backbone (randomly initialised: speed does not depend on the weights) at its input size in
configs/quick.yaml scores ``--images`` random images at each batch size, in NCHW and in
channels-last, after one warm-up batch. Prints and writes ``benchmarks/results/eval_batch.json``
/ ``.md``: images per second for each layout and batch size, and the largest difference of the
logits between the two layouts.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from logo_train.config import load_config
from logo_train.models import build_model

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def images_per_s(model, size: int, batch: int, images: int, layout) -> tuple[float, torch.Tensor]:
    """Images per second of ``model`` in ``layout`` at ``batch``, and the logits of a fixed
    batch (to compare layouts)."""
    model = copy.deepcopy(model).eval().to(memory_format=layout)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).contiguous(memory_format=layout)
    steps = max(2, images // batch)
    with torch.inference_mode():
        logits = model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
    return steps * batch / (time.perf_counter() - start), logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backbones", nargs="+", default=["efficientnet_lite0", "resnet10t", "efficientnetv2_nano"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 32, 64, 128, 256])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = load_config(ROOT / "configs/quick.yaml").image_sizes()
    rows = []
    for name in args.backbones:
        size = sizes.get(name, 32)
        model = build_model(name, 28, size)
        for batch in args.batches:
            row = {"backbone": name, "image_size": size, "batch": batch}
            logits = {}
            for key, layout in LAYOUTS.items():
                row[key], logits[key] = images_per_s(model, size, batch, args.images, layout)
            row["max_abs_logit_diff"] = float(
                (logits["nchw"] - logits["channels_last"]).abs().max()
            )
            rows.append(row)
            print(
                f"{name} {size} px batch {batch:>3}: NCHW {row['nchw']:6.0f} img/s, "
                f"channels-last {row['channels_last']:6.0f} img/s",
                flush=True,
            )
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_batch.json").write_text(json.dumps({**vars(args), "rows": rows}, indent=2))
    lines = [
        "| backbone | px | batch | NCHW img/s | channels-last img/s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['backbone']} | {r['image_size']} | {r['batch']} | {r['nchw']:.0f} | "
        f"{r['channels_last']:.0f} |"
        for r in rows
    ]
    (out / "eval_batch.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
