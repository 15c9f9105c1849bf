"""CPU latency of one backbone: eager PyTorch (inference mode) vs ONNX Runtime, and the achieved
GFLOP/s as a fraction of the machine's peak.

    python benchmarks/latency_cpu.py [--backbone resnet50] [--size 224] [--threads 2]
                                     [--runs 50] [--out benchmarks/results]

The model is randomly initialised (latency does not depend on the weights). FLOPs come from
torch's own counter (``torch.utils.flop_counter``, a multiply-add = 2). The peak is given two
ways: (a) theoretical, from /proc/cpuinfo — cores x clock x FP32 FLOPs per cycle (2 FMA pipes x
8 lanes x 2 with AVX2+FMA, 2 x 16 x 2 with AVX-512) — and (b) measured, the best of a large
float32 matrix multiply (torch.mm 2048x2048, same threads). Written:
``latency_cpu.json`` and a line for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from logo_train.config import BenchmarkConfig
from logo_train.evaluate import count_flops, cpu_model, eager_forward, speed
from logo_train.exported import export_onnx, onnx_agreement, onnx_session
from logo_train.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def theoretical_peak_gflops(threads: int) -> tuple[float, str]:
    text = Path("/proc/cpuinfo").read_text()
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split())
    mhz = float(
        next(line for line in text.splitlines() if line.startswith("cpu MHz")).split(":")[1]
    )
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * lanes * (2 if "fma" in flags else 1)  # 2 FMA pipes x lanes x (mul + add)
    how = (
        f"{threads} cores x {mhz / 1000:.3f} GHz (cpu MHz) x {per_cycle} FP32 FLOPs/cycle "
        f"({'AVX-512' if lanes == 16 else 'AVX2' if lanes == 8 else 'SSE'}"
        f"{' + FMA' if 'fma' in flags else ''}, 2 pipes)"
    )
    return threads * mhz / 1000 * per_cycle, how


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BenchmarkConfig(
        latency_runs=args.runs, warmup_runs=10, throughput_batch=16, throughput_runs=3
    )
    model = build_model(args.backbone, 28, args.size).eval()
    # build_model zero-initialises the classifier: random weights make the ONNX check non-trivial
    torch.nn.init.normal_(model.get_classifier().weight, std=0.05)
    flops = count_flops(model, args.size)
    eager = speed(eager_forward(model, torch.device("cpu")), args.size, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, args.size, Path(tmp) / "m.onnx")
        session = onnx_session(path, args.threads)
        x = np.random.default_rng(0).standard_normal((2, 3, args.size, args.size), np.float32)
        check = onnx_agreement(model, session, x, tolerance=1e-3)
        onnx = speed(lambda a: session.run(["logits"], {"image": a}), args.size, cfg)
    theory, how = theoretical_peak_gflops(args.threads)
    measured = matmul_peak_gflops()
    result = {
        "backbone": args.backbone,
        "image_size": args.size,
        "cpu": cpu_model(),
        "threads": args.threads,
        "gflops_per_image": flops / 1e9,
        "eager": eager,
        "onnx": {**onnx, **check},
        "peak_gflops_theoretical": theory,
        "peak_how": how,
        "peak_gflops_matmul": measured,
    }
    for name in ("eager", "onnx"):
        achieved = flops / (result[name]["latency_ms_p50"] / 1e3) / 1e9
        result[name]["achieved_gflops_at_p50"] = achieved
        result[name]["fraction_of_theoretical_peak"] = achieved / theory
        result[name]["fraction_of_matmul_peak"] = achieved / measured
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency_cpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(
        f"\n| runtime | p50 (ms) | p95 (ms) | throughput (images/s, batch 16) | GFLOP/s at p50 "
        f"| of theoretical peak ({theory:.0f}) | of matmul peak ({measured:.0f}) |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    for name, label in (("eager", "eager PyTorch"), ("onnx", "ONNX Runtime")):
        r = result[name]
        print(
            f"| {label} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | "
            f"{r['throughput_images_per_s']:.1f} | {r['achieved_gflops_at_p50']:.1f} | "
            f"{100 * r['fraction_of_theoretical_peak']:.0f}% | "
            f"{100 * r['fraction_of_matmul_peak']:.0f}% |"
        )


if __name__ == "__main__":
    main()
