"""The label audit in float32 against bfloat16 (``train.audit_precision``) on a finished run:
each trained backbone's best checkpoint scores the run's training rows both ways; the forward
time, the rows the cleaning rule would suspect and relabel, and how well the loss finds the
flipped labels.

    python benchmarks/audit_precision.py RUN_DIR [--threads 2] [--out benchmarks/results]

RUN_DIR: a ``logo-train run`` folder of the embedded data (``runs/quick``), whose
``train/summary.json`` lists the checkpoints. The rule is the run's ``train.clean``
(``given_prob``, ``relabel_confidence``). Written: ``audit_precision.json`` and a Markdown
table for docs/labels.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from logo_train.audit import detection_metrics, score_split
from logo_train.checkpoint import load_trust_model
from logo_train.data.augment import eval_spec
from logo_train.layout import RunLayout
from logo_train.storage import read_json

ROOT = Path(__file__).resolve().parents[1]


def compare(checkpoint: str, shards: str, given_prob: float, relabel_at: float) -> dict:
    """Scores of ``checkpoint`` on the training rows of ``shards`` in both precisions."""
    model, info = load_trust_model(checkpoint)
    spec = eval_spec(info)
    row: dict = {}
    plans = {}
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        start = time.perf_counter()
        scores, table = score_split(
            model, shards, spec, torch.device("cpu"), ["image", "label", "is_noisy"], 64, bf16
        )
        seconds = time.perf_counter() - start
        labels = np.asarray(table["label"].to_pylist())
        noisy = np.asarray(table["is_noisy"].to_pylist(), bool)
        given = scores.probabilities[np.arange(len(labels)), labels]
        suspected = given < given_prob
        relabelled = suspected & (scores.probabilities.max(1) >= relabel_at)
        plans[name] = suspected
        row[name] = {
            "seconds": seconds,
            "suspected": int(suspected.sum()),
            "relabelled": int(relabelled.sum()),
            "auroc_loss": detection_metrics(noisy, scores.loss)["auroc"],
        }
    row["suspected_differ"] = int((plans["float32"] != plans["bfloat16"]).sum())
    return row


def main() -> None:
    from logo_train.cli import load_config_of_run

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config_of_run(args.run_dir, [])
    layout = RunLayout(args.run_dir)
    shards = cfg.data.shards_uri or layout.data
    cc = cfg.train.clean
    rows = []
    for entry in read_json(layout.train_summary)["results"]:  # round 1: the run's own data
        row = compare(entry["checkpoint"], shards, cc.given_prob, cc.relabel_confidence)
        rows.append({"backbone": entry["backbone"], **row})
        f, b = row["float32"], row["bfloat16"]
        print(
            f"| {entry['backbone']} | {f['seconds']:.1f} / {b['seconds']:.1f} s | "
            f"{f['suspected']:,} / {b['suspected']:,} ({row['suspected_differ']} differ) | "
            f"{f['relabelled']:,} / {b['relabelled']:,} | "
            f"{f['auroc_loss']:.4f} / {b['auroc_loss']:.4f} |",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit_precision.json").write_text(json.dumps({"threads": args.threads, "rows": rows}))
    print(f"written: {out / 'audit_precision.json'}")


if __name__ == "__main__":
    main()
