"""Training steps on CPU in float32 against bfloat16 autocast of the whole step and of the
frozen stages only (``train.frozen_precision``), for the quick profile's backbones at their
quick sizes: does ``torch.autocast("cpu", torch.bfloat16)`` pay on this machine?

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

from logo_train.models import build_model, freeze_leading, frozen_in_bfloat16

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (backbone, image size, frozen stages): the quick profile's recipes
    ("efficientnet_lite0", 112, 4),
    ("resnet10t", 32, 0),
    ("efficientnetv2_nano", 32, 0),
]


def images_per_s(backbone: str, size: int, frozen: int, kind: str, steps: int, batch: int):
    """``kind``: fp32, bf16 (the whole step under autocast) or frozen-bf16 (the frozen stages
    only, ``models.frozen_in_bfloat16``, as the trainer runs them)."""
    torch.manual_seed(0)
    model = build_model(backbone, 28, size, weights="none")
    modules = freeze_leading(model, frozen)
    if kind == "frozen-bf16":
        frozen_in_bfloat16(model, modules)
    model = model.to(memory_format=torch.channels_last).train()
    for module in modules:  # as the trainer keeps them
        module.eval()
    bf16 = kind == "bf16"
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
            kind: images_per_s(backbone, size, frozen, kind, args.steps, args.batch)
            for kind in ("fp32", "bf16", "frozen-bf16")
            if kind != "frozen-bf16" or frozen
        }
        rows.append({"backbone": backbone, "image_size": size, "frozen_stages": frozen, **rates})
        line = ", ".join(
            f"{kind} {rate:.0f} images/s ({rate / rates['fp32']:.2f}x)"
            for kind, rate in rates.items()
        )
        print(f"{backbone} {size} px, {frozen} stages frozen: {line}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_bf16.json").write_text(
        json.dumps({"threads": args.threads, "batch": args.batch, "rows": rows}, indent=2)
    )
    print(f"written: {out / 'cpu_bf16.json'}")


if __name__ == "__main__":
    main()
