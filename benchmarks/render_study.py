"""Which preprocessing for crops that are not square, and what wide crops cost: the quick
profile's backbone recipe trained in process on the embedded data rendered square
(``data.synth.max_aspect=1``) or with detector-like wide crops (the default), under each
``model.resize`` mode, every model scored on the clean test split of both renders.

    python benchmarks/render_study.py [--runs square:stretch,wide:stretch,wide:pad,wide:crop]
        [--backbone resnet10t] [--seeds 0] [--threads 2] [--out benchmarks/results]

A run is ``DATA:RESIZE``: DATA ``square`` or ``wide``, RESIZE one of ``stretch``, ``pad``,
``crop``. Only the crop shape and the resize mode change; the task (28 classes, difficulty,
20% symmetric noise, imbalance 10, 32 px) is the quick profile's. Model choice is by the
validation split of the run's own data (macro-F1 at the last epoch, as the noise study).

Written: ``render_study.json`` (every run with its history) and ``render_study.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from logo_train.config import Config, load_config
from logo_train.data.shards import read_manifest
from logo_train.local import evaluate_split, fit_local
from logo_train.storage import exists, join

ROOT = Path(__file__).resolve().parents[1]
DATA = {"square": 1.0, "wide": 2.0}


def config(args: argparse.Namespace, data: str, resize: str, seed: int) -> Config:
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [
            f"output_dir={args.work_dir}",
            "name=render-study",
            f"data.synth.max_aspect={DATA[data]}",
            f"data.synth.seed={seed}",
            f"train.seed={seed}",
            f"model.resize={resize}",
            "train.clean.mode=none",
        ],
    )
    return cfg.for_backbone(args.backbone)


def render(cfg: Config, uri: str) -> None:
    if exists(join(uri, "manifest.json")):
        return
    from logo_train.data.synth import generate

    start = time.perf_counter()
    generate(cfg.data.synth, uri, rows_per_shard=2000, progress=False)
    print(f"rendered {uri} in {time.perf_counter() - start:.0f} s", flush=True)


def wide_share(uri: str) -> float:
    """Share of the test images wider than tall."""
    from logo_train.data.augment import decode_batch
    from logo_train.data.shards import read_split

    images = decode_batch(read_split(uri, "test", ["image"])["image"].to_pylist())
    return float(np.mean([img.shape[1] > img.shape[0] for img in images]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", default="square:stretch,wide:stretch,wide:pad,wide:crop")
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--work-dir", default="/tmp/logo-train-render-study")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = [tuple(r.split(":")) for r in args.runs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in seeds:
        uris = {}
        for data in sorted({d for d, _ in runs} | {"square", "wide"}):
            uris[data] = f"{args.work_dir}/data-{data}-seed{seed}"
            render(config(args, data, "stretch", seed), uris[data])
        for data, resize in runs:
            cfg = config(args, data, resize, seed)
            manifest = read_manifest(uris[data])
            start = time.perf_counter()
            fit = fit_local(
                cfg,
                args.backbone,
                uris[data],
                manifest,
                device="cpu",
                loader_workers=args.loader_workers,
                eval_every=cfg.train.epochs,
                echo=None,
            )
            row = {
                "data": data,
                "resize": resize,
                "seed": seed,
                "val_macro_f1": fit.history[-1]["val_macro_f1"],
                "seconds": time.perf_counter() - start,
                "history": fit.history,
            }
            for test_data, uri in uris.items():
                test = evaluate_split(
                    fit.classifier, cfg, args.backbone, uri, read_manifest(uri), "test"
                )
                row[f"test_{test_data}_macro_f1"] = test["macro_f1"]
            results.append(row)
            print(
                f"seed {seed} {data}:{resize} val {row['val_macro_f1']:.3f} "
                f"test square {row['test_square_macro_f1']:.3f} "
                f"wide {row['test_wide_macro_f1']:.3f} ({row['seconds']:.0f} s)",
                flush=True,
            )
            (out / "render_study.json").write_text(json.dumps(results, indent=2))
    shares = {data: wide_share(uri) for data, uri in uris.items()}
    lines = [
        f"{args.backbone}, quick recipe, seeds {args.seeds}; clean-test macro-F1 "
        f"(test images wider than tall: square {shares['square']:.0%}, wide {shares['wide']:.0%})",
        "",
        "| trained on | resize | val macro-F1 | test: square renders | test: wide renders |",
        "|---|---|---|---|---|",
    ]
    for data, resize in runs:
        rows = [r for r in results if (r["data"], r["resize"]) == (data, resize)]

        def cell(key: str, rows=rows) -> str:
            v = np.array([r[key] for r in rows])
            return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")

        lines.append(
            f"| {data} | {resize} | {cell('val_macro_f1')} | {cell('test_square_macro_f1')} "
            f"| {cell('test_wide_macro_f1')} |"
        )
    (out / "render_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
