"""AdamW on CPU: torch's default (a Python loop over the parameters), its multi-tensor
``foreach`` kernels, and its ``fused`` kernel, in whole training steps of the quick profile's
backbones at their quick sizes (what ``engine.FUSED_ON_CPU`` rests on).

    python benchmarks/cpu_optimizer.py [--steps 15] [--batch 64] [--repeats 2] [--threads 2]

Each case builds the backbone (random init: speed does not depend on the weights), freezes what
the quick recipe freezes, puts it in channels-last as the trainer does, makes timm's AdamW
(no decay on norms and biases) with each implementation and times ``--steps`` steps on one
random batch after 3 warm-up steps; the implementations alternate ``--repeats`` times. Writes
``benchmarks/results/cpu_optimizer.json`` / ``.md``: images/s per case and implementation
(each repeat).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2

from logo_train.models import build_model, freeze_leading

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (backbone, image size, frozen stages): the quick profile's recipes
    ("resnet10t", 32, 0),
    ("mobilenetv2_050", 32, 0),
    ("swin_nano", 32, 0),
    ("efficientformer_nano", 32, 0),
    ("efficientnetv2_nano", 32, 0),
    ("efficientnet_lite0", 112, 4),
]
KINDS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def images_per_s(name: str, size: int, frozen: int, kind: str, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(name, 28, size)
    freeze_leading(model, frozen)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=1e-4, **KINDS[kind])
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 28, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, size, frozen in CASES:
        rates: dict[str, list[float]] = {k: [] for k in KINDS}
        for _ in range(args.repeats):
            for kind in KINDS:
                rates[kind].append(images_per_s(name, size, frozen, kind, args.batch, args.steps))
        rows.append({"backbone": name, "image_size": size, "frozen_stages": frozen, **rates})
        print(name, {k: [round(v) for v in vs] for k, vs in rates.items()}, flush=True)
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_optimizer.json").write_text(json.dumps({**vars(args), "rows": rows}, indent=2))
    lines = [
        "| backbone | px | loop img/s | foreach img/s | fused img/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [" / ".join(f"{v:.0f}" for v in r[k]) for k in KINDS]
        lines.append(f"| {r['backbone']} | {r['image_size']} | " + " | ".join(cells) + " |")
    (out / "cpu_optimizer.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
