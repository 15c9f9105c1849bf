"""Split an ImageFolder of real photos into a training part and a held-out part, per class.

    python benchmarks/split_folder.py REAL_DIR OUT_DIR --held-out 0.4 [--seed 0]

Writes ``OUT_DIR/train/<class>/`` (for ``logo-train run --data``, which carves its own
validation and test splits out of it) and ``OUT_DIR/held_out/<class>/`` (for
``data.real_eval``: photos the run never sees). Files are copied, not linked (ingest follows a
link only within its tree). The split is per class and seeded: ``round(held_out * n)`` files
of each class, chosen at random, are held out. Prints the counts.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np


def split_folder(src: Path, out: Path, held_out: float, seed: int) -> dict[str, tuple[int, int]]:
    if not src.is_dir():
        raise SystemExit(f"{src}: not a folder")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: exists and is not empty")
    rng = np.random.default_rng(seed)
    counts = {}
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        held = set(rng.choice(len(files), size=round(held_out * len(files)), replace=False))
        for i, path in enumerate(files):
            part = "held_out" if i in held else "train"
            target = out / part / folder.name / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        counts[folder.name] = (len(files) - len(held), len(held))
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--held-out", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    counts = split_folder(args.src, args.out, args.held_out, args.seed)
    for name, (train, held) in counts.items():
        print(f"{name:<14} train {train:4d}  held out {held:4d}")
    total = [sum(c) for c in zip(*counts.values(), strict=True)]
    print(f"{'all':<14} train {total[0]:4d}  held out {total[1]:4d}  -> {args.out}")


if __name__ == "__main__":
    main()
