"""Training steps on CPU in float32 against bfloat16 autocast, for the quick profile's backbones
at their quick sizes: does ``torch.autocast("cpu", torch.bfloat16)`` pay on this machine?

    python benchmarks/cpu_bf16.py [--steps 6] [--batch 64] [--threads 2] [--out benchmarks/results]

Each case builds the backbone (random init: speed does not depend on the weights), freezes the
stages the quick recipe freezes (``models.freeze_leading``), puts it in channels-last as the
trainer does, and times ``--steps`` AdamW steps on one random batch; images/s is the batch over
the median of the steps after the first two (warm-up). Written: ``cpu_bf16.json`` and a line
per case for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from logo_train.models import build_model, freeze_leading

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (backbone, image size, frozen stages): the quick profile's recipes
    ("efficientnet_lite0", 112, 4),
    ("resnet10t", 32, 0),
    ("efficientnetv2_nano", 32, 0),
]


def images_per_s(backbone: str, size: int, frozen: int, bf16: bool, steps: int, batch: int):
    torch.manual_seed(0)
    model = build_model(backbone, 28, size, weights="none")
    freeze_leading(model, frozen)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 28, (batch,))
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    timed = sorted(seconds[2:])
    return batch / timed[len(timed) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    if args.steps < 3:
        p.error("--steps: at least 3 (the first two are warm-up)")
    torch.set_num_threads(args.threads)
    rows = []
    for backbone, size, frozen in CASES:
        rates = {
            kind: images_per_s(backbone, size, frozen, kind == "bf16", args.steps, args.batch)
            for kind in ("fp32", "bf16")
        }
        rows.append({"backbone": backbone, "image_size": size, "frozen_stages": frozen, **rates})
        print(
            f"{backbone} {size} px, {frozen} stages frozen: float32 {rates['fp32']:.0f} images/s, "
            f"bf16 autocast {rates['bf16']:.0f} images/s ({rates['bf16'] / rates['fp32']:.2f}x)",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_bf16.json").write_text(
        json.dumps({"threads": args.threads, "batch": args.batch, "rows": rows}, indent=2)
    )
    print(f"written: {out / 'cpu_bf16.json'}")


if __name__ == "__main__":
    main()
