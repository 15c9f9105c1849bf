"""What one Ray Train run (one worker group) costs before its first epoch ends, and where that
goes: the processes Ray starts for it and the Python imports each one pays.

    python benchmarks/ray_startup.py [--fits 3] [--backbone resnet10t] [--out benchmarks/results]

Starts a local Ray (2 CPUs), renders a tiny task (28 classes x 12 images, 32 px) and trains the
backbone 2 epochs, ``--fits`` times in a row, one worker of 1 CPU, as tests/test_train_ray.py
does. Every process Ray starts runs with ``PYTHONPROFILEIMPORTTIME=1``; from the session's logs
each process is named (its actor or task) and its imports summed. Writes
``ray_startup.{json,md}``: per fit the seconds from ``fit()`` to the first epoch's end and to
its return, and per process role the start time after ``fit()`` and the import seconds. On a
2-core machine the imports of the processes one run starts add up to more CPU than the two
epochs: a tiny run's time is Ray's start-up, paid once per worker group (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STARTED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
ROLE = re.compile(r":(?:actor|task)_name:([A-Za-z_]+(?:\([A-Za-z_]+\))?)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fits", type=int, default=3)
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = p.parse_args()
    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # inherited by the raylet and every worker
    import ray

    from logo_train.data.prepare import prepare_data
    from logo_train.train import train_backbones
    from tests.test_train_ray import tiny_config

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    tmp = Path(tempfile.mkdtemp(prefix="ray_startup-"))
    cfg = tiny_config(
        tmp,
        f"model.backbones=[{args.backbone}]",
        "train.epochs=2",
        "train.num_workers=1",
        "train.cpus_per_worker=1",
    )
    uri, manifest, _ = prepare_data(cfg, progress=False)
    fits = []
    for i in range(args.fits):
        epochs: list[float] = []
        start = time.time()
        done, failed = train_backbones(
            {args.backbone: cfg.for_backbone(args.backbone)},
            uri,
            manifest,
            name=f"fit{i}",
            echo=lambda line, e=epochs: e.append(time.time()) if " epoch " in line else None,
        )
        end = time.time()
        if failed or not done:
            raise SystemExit(f"fit {i} failed: {failed}")
        fits.append({"start": start, "first_epoch_s": epochs[0] - start, "fit_s": end - start})
        print(
            f"fit {i + 1}: first epoch ended after {epochs[0] - start:.1f} s, fit() took "
            f"{end - start:.1f} s",
            flush=True,
        )
    ray.shutdown()
    processes = _processes(session)
    for n, fit in enumerate(fits):
        until = fits[n + 1]["start"] if n + 1 < len(fits) else float("inf")
        mine = [q for q in processes if fit["start"] - 1 <= q["started"] < until]
        fit["processes"] = [
            {**q, "started": round(q["started"] - fit["start"], 1)} for q in mine if q["role"]
        ]
        fit["import_s"] = round(sum(q["import_s"] for q in mine), 1)
    shutil.rmtree(tmp, ignore_errors=True)
    _write(args, fits, manifest.split_rows("train"))


def _processes(logs: Path) -> list[dict]:
    """Every worker process of the session: when it started, what it ran, its import seconds."""
    found = []
    for core_log in logs.glob("python-core-worker-*.log"):
        pid = core_log.stem.rsplit("_", 1)[-1]
        first = core_log.read_text(errors="replace").split("\n", 1)[0]
        match = STARTED.match(first)
        if not match:
            continue
        started = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out = "".join(p.read_text(errors="replace")[:400] for p in logs.glob(f"worker-*-{pid}.out"))
        role = ROLE.search(out)
        found.append(
            {
                "role": role[1] if role else "",
                "pid": int(pid),
                "started": started,
                "import_s": _import_seconds(logs, pid),
            }
        )
    return sorted(found, key=lambda q: q["started"])


def _import_seconds(logs: Path, pid: str) -> float:
    """The sum of the top-level imports' cumulative times (``-X importtime``) of one process."""
    total = 0
    for err in logs.glob(f"worker-*-{pid}.err"):
        for line in err.read_text(errors="replace").splitlines():
            if line.startswith("import time:") and line.count("|") == 2:
                _, cumulative, name = line.split("|")
                if cumulative.strip().isdigit() and not name.startswith("  "):
                    total += int(cumulative)
    return round(total / 1e6, 2)


def _write(args, fits: list[dict], train_rows: int) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_startup.json").write_text(json.dumps({"fits": fits}, indent=2) + "\n")
    lines = [
        f"# Ray Train start-up: {args.backbone}, 2 epochs of {train_rows} images, 1 worker, "
        "local Ray (2 CPUs)",
        "",
        "| fit | first epoch ended (s) | fit() (s) | processes started | their imports (s, wall) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, f in enumerate(fits, 1):
        lines.append(
            f"| {n} | {f['first_epoch_s']:.1f} | {f['fit_s']:.1f} | {len(f['processes'])} | "
            f"{f['import_s']:.1f} |"
        )
    lines += ["", f"Processes of fit {len(fits)} (seconds after `fit()`):", ""]
    lines += ["| process | started (s) | imports (s) |", "|---|---:|---:|"]
    lines += [
        f"| {q['role']} | {q['started']:.1f} | {q['import_s']:.1f} |" for q in fits[-1]["processes"]
    ]
    text = "\n".join(lines) + "\n"
    (args.out / "ray_startup.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
