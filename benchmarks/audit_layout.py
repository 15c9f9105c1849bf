"""The audit's forward pass in NCHW against channels-last (what ``audit.score_batches`` and
``audit.score_split`` use since 2026-12-06).

    python benchmarks/audit_layout.py [--backbone efficientnet_lite0] [--size 112]
                                      [--batch 256] [--batches 4] [--threads 2]

A randomly initialised model in eval mode (speed does not depend on the weights) runs
``--batches`` random batches under ``torch.inference_mode`` twice: model and inputs in NCHW
(the audit before), then both channels-last. Prints and writes
``benchmarks/results/audit_layout.json`` / ``.md``: seconds per batch each way, the speed-up and
the largest difference of the logits.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from logo_train.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def timed(model, batches, layout) -> tuple[float, torch.Tensor]:
    model = copy.deepcopy(model).eval().to(memory_format=layout)
    inputs = [x.contiguous(memory_format=layout) for x in batches]
    with torch.inference_mode():
        model(inputs[0])  # warm-up
        start = time.perf_counter()
        logits = [model(x) for x in inputs]
    return (time.perf_counter() - start) / len(inputs), torch.cat(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.backbone, 29, args.size)
    batches = [torch.randn(args.batch, 3, args.size, args.size) for _ in range(args.batches)]
    nchw, a = timed(model, batches, torch.contiguous_format)
    nhwc, b = timed(model, batches, torch.channels_last)
    result = {
        **vars(args),
        "nchw_s_per_batch": round(nchw, 3),
        "channels_last_s_per_batch": round(nhwc, 3),
        "speedup": round(nchw / nhwc, 2),
        "max_abs_logit_diff": float((a - b).abs().max()),
    }
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit_layout.json").write_text(json.dumps(result, indent=2))
    line = (
        f"{args.backbone} {args.size} px, batch {args.batch}, {args.threads} threads: NCHW "
        f"{nchw:.2f} s a batch, channels-last {nhwc:.2f} s ({nchw / nhwc:.2f}x); "
        f"max |logit diff| {result['max_abs_logit_diff']:.1e}"
    )
    (out / "audit_layout.md").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
