"""One process with two torch threads against two one-thread processes at once, per 32 px
family: what ``train.lanes`` (two Ray Train runs side by side, each worker with one thread)
buys over one worker with two threads on a 2-core machine.

    python benchmarks/lanes_threads.py [--steps 40] [--batch 64] [--out benchmarks/results]

Each case is ``cpu_bf16.images_per_s`` in float32 (random init, channels-last, AdamW steps on
one random batch; images/s over the median step after two warm-up steps): first in this process
with 2 threads, then in two spawned processes with 1 thread each, started together; their sum
is what two lanes train. Written: ``lanes_threads.json`` and a line per family.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from pathlib import Path

import torch

from logo_train.backbones import BACKBONES, REFERENCE_FAMILIES
from logo_train.storage import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_bf16 import images_per_s  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = [n for n, s in BACKBONES.items() if s.size == "small" and s.family in REFERENCE_FAMILIES]
"""The five families' small members (the registry's), which the quick profile trains at 32 px."""


def _one_thread(backbone: str, steps: int, batch: int, start, rates) -> None:
    torch.set_num_threads(1)
    start.wait()  # both processes step at the same time
    rates.put(images_per_s(backbone, 32, 0, "fp32", steps, batch))


def side_by_side(backbone: str, steps: int, batch: int) -> list[float]:
    """images/s of two one-thread processes training ``backbone`` at once."""
    ctx = mp.get_context("spawn")
    start, rates = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_one_thread, args=(backbone, steps, batch, start, rates))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    out = [rates.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    if args.steps < 3:
        p.error("--steps: at least 3 (the first two are warm-up)")
    rows = []
    for backbone in FAMILIES:
        torch.set_num_threads(2)
        two_threads = images_per_s(backbone, 32, 0, "fp32", args.steps, args.batch)
        lanes = side_by_side(backbone, args.steps, args.batch)
        rows.append({"backbone": backbone, "one_process_2_threads": two_threads,
                     "two_processes_1_thread": lanes})  # fmt: skip
        print(f"{backbone}: 1 process x 2 threads {two_threads:.0f} images/s; 2 processes x 1 "
              f"thread {lanes[0]:.0f} + {lanes[1]:.0f} = {sum(lanes):.0f} "
              f"({sum(lanes) / two_threads:.2f}x)", flush=True)  # fmt: skip
    data = {"steps": args.steps, "batch": args.batch, "rows": rows}
    print(f"written: {write_json(Path(args.out) / 'lanes_threads.json', data)}")


if __name__ == "__main__":
    main()
