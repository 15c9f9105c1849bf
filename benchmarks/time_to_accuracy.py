"""Where a run's training time went, and what it bought: validation macro-F1 against wall
seconds per backbone, the clean-test macro-F1 of each best checkpoint, and the fixed cost per
backbone outside steady-state training.

    make run                                   # or: logo-train run --config configs/quick.yaml
    python benchmarks/time_to_accuracy.py [--run runs/quick] [--plot docs/time_to_accuracy.png]

Reads the run's ``train/summary.json`` (per-backbone time breakdown, written by the one worker
group that trains every backbone), each backbone's ``history.json`` (per-epoch metrics and
seconds) and ``report/benchmark.json`` (clean-test metrics); trains nothing. Writes
``benchmarks/results/time_to_accuracy.json`` / ``.md`` and the plot.

The time axis of a backbone starts when the worker group was asked to start (the first
backbone carries the group's start-up) and adds each epoch's seconds: training, validation and
checkpoints. The validation split is clean and balanced (``data.synth.noisy_val: false``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def curves(run: Path) -> dict:
    summary = json.loads((run / "train/summary.json").read_text())
    bench = json.loads((run / "report/benchmark.json").read_text())
    # by the table's name: a cleaning round's entry (``<backbone>-round2``) is not round 1's
    test = {e.get("label") or e["backbone"]: e["metrics"]["macro_f1"] for e in bench["backbones"]}
    out, total_images, total_seconds, steady_seconds = {}, 0, 0.0, 0.0
    for row in summary["results"]:
        history = json.loads((Path(row["run_path"]) / "history.json").read_text())
        t = row["time"]
        clock, points = t["group_start"] + t["setup"], []
        for h in history:
            clock += h["epoch_seconds"]
            points.append((round(clock, 1), round(h["val_macro_f1"], 4)))
        out[row["backbone"]] = {
            "val_macro_f1_by_seconds": points,
            "best_val_macro_f1": row["best_val_macro_f1"],
            "test_macro_f1": test.get(row["backbone"]),
            "seconds": round(row["seconds"], 1),
            "fixed_seconds": round(t["fixed"], 1),
            "group_start_seconds": round(t["group_start"], 1),
            "setup_seconds": round(t["setup"], 1),
            "first_batch_wait_seconds": round(t["first_batch_wait"], 1),
            "validation_seconds": round(t["validation"], 1),
            "checkpoint_seconds": round(t["checkpoint"], 1),
            "steady_images_per_s": round(t["steady_images_per_s"], 1),
            "images": t["images"],
        }
        total_images += t["images"]
        total_seconds += row["seconds"]
        steady_seconds += t["images"] / t["steady_images_per_s"]
    return {
        "run": str(run),
        "backbones": out,
        "train_seconds": round(total_seconds, 1),
        "effective_images_per_s": round(total_images / total_seconds, 1),
        "steady_share": round(steady_seconds / total_seconds, 3),
    }


def markdown(data: dict) -> str:
    lines = [
        "| backbone | clean-test macro-F1 | best val macro-F1 | seconds | fixed s | group start s "
        "| set-up s | first-batch wait s | validation s | checkpoints s | steady img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, b in data["backbones"].items():
        lines.append(
            f"| {name} | {b['test_macro_f1']:.3f} | {b['best_val_macro_f1']:.3f} | {b['seconds']} "
            f"| {b['fixed_seconds']} | {b['group_start_seconds']} | {b['setup_seconds']} "
            f"| {b['first_batch_wait_seconds']} | {b['validation_seconds']} "
            f"| {b['checkpoint_seconds']} | {b['steady_images_per_s']} |"
        )
    lines.append(
        f"\nTrain stage: {data['train_seconds']} s, effective {data['effective_images_per_s']} "
        f"images/s = {data['steady_share']:.2f} of the steady-state rate."
    )
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    from logo_train.figures import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, b in data["backbones"].items():
        xs, ys = zip(*b["val_macro_f1_by_seconds"], strict=True)
        (line,) = ax.plot(xs, ys, marker=".", label=name)
        if b["test_macro_f1"] is not None:
            ax.scatter([xs[-1]], [b["test_macro_f1"]], marker="*", s=120, color=line.get_color())
    ax.axhline(1 / 28, color="grey", linestyle=":", label="chance (1/28)")
    ax.set_xlabel("wall seconds of the backbone's training (first: + worker-group start)")
    ax.set_ylabel("macro-F1 (line: clean val per epoch, star: clean test)")
    ax.set_title(f"time to accuracy: {data['run']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "runs/quick")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/time_to_accuracy.png")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = p.parse_args()
    data = curves(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "time_to_accuracy.json").write_text(json.dumps(data, indent=2))
    (args.out / "time_to_accuracy.md").write_text(markdown(data))
    plot(data, args.plot)
    print(markdown(data))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
