"""Two runs' tables side by side, to the digit: test macro-F1, accuracy and validation
macro-F1 of every model (benchmark.json), the audit's AUROC (loss) and the cleaning round's
counts. Exit code 1 when they differ at the third decimal. For "the same table as before":

    python benchmarks/compare_runs.py RUN_BEFORE RUN_AFTER      (run folders, e.g. runs/quick)
"""

from __future__ import annotations

import argparse
import sys

from logo_train.layout import RunLayout
from logo_train.results import load
from logo_train.storage import exists, join, read_json


def numbers(run_dir: str) -> dict[str, dict[str, float]]:
    data, _ = load(run_dir)
    out = {}
    for e in data["backbones"]:
        label = e.get("label", e["backbone"])
        row = {
            "test macro-F1": e["metrics"]["macro_f1"],
            "test accuracy": e["metrics"]["accuracy"],
            "val macro-F1": e.get("train", {}).get("best_val_macro_f1", float("nan")),
        }
        summary = join(
            RunLayout(run_dir).audit(e["backbone"], e.get("round", 1)), "audit_summary.json"
        )
        if exists(summary):
            detection = read_json(summary).get("detection", {})
            if "loss" in detection:
                row["audit AUROC (loss)"] = detection["loss"]["auroc"]
        for key in ("dropped", "relabelled", "flipped_after"):
            if key in e.get("cleaning", {}):
                row[f"round: {key}"] = e["cleaning"][key]
        out[label] = row
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args()
    before, after = numbers(args.before), numbers(args.after)
    same = before.keys() == after.keys()
    for label, row in before.items():
        for key, value in row.items():
            other = after.get(label, {}).get(key)
            equal = other is not None and round(value, 3) == round(other, 3)
            same &= equal
            shown = "missing" if other is None else f"{other:10.4f}"
            print(f"{label:<28} {key:<20} {value:10.4f} {shown}  {'' if equal else 'DIFFERENT'}")
    print("same to the third decimal" if same else "the runs differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
