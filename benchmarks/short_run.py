"""One backbone, one config, trained in process (no Ray): how a loss setting behaves on a short
CPU run of the quick profile.

    python benchmarks/short_run.py [--backbone resnet10t] [--set KEY=VALUE ...]

Uses configs/quick.yaml's shards (made by `make run` / `logo-train data synth`), prints one
line per epoch (validation every 5) and the best validation macro-F1. This is how the quick
profile's `penalty_weight` was chosen (docs/benchmarks.md, "Short runs").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from logo_train.config import load_config
from logo_train.data.prepare import prepare_data
from logo_train.local import fit_local

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    torch.set_num_threads(1)  # the other core feeds the loader process
    cfg = load_config(ROOT / "configs/quick.yaml", args.overrides)
    uri, manifest, _ = prepare_data(cfg, progress=False)
    start = time.perf_counter()
    fit = fit_local(cfg, args.backbone, uri, manifest, device="cpu", eval_every=5)
    best = max(h.get("val_macro_f1", 0.0) for h in fit.history)
    print(
        f"{args.backbone} {' '.join(args.overrides)}: best val macro-F1 {best:.3f} "
        f"in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
