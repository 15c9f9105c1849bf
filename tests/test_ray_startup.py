"""benchmarks/ray_startup.py reads Ray's session logs: each worker process's start, role and
import seconds (no Ray here: a session's log files written by hand)."""

import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ray_startup  # noqa: E402

IMPORTS = """\
import time: self [us] | cumulative | imported package
import time:       120 |        120 |     _io
import time:       300 |    2500000 |   torch
import time:      1000 |    3000000 | logo_train.worker
import time:       500 |     250000 | ray.train
import time: garbage line
"""


def _process(logs: Path, pid: int, started: str, out: str, err: str) -> None:
    (logs / f"python-core-worker-abc{pid}_{pid}.log").write_text(
        f"[{started} I {pid} {pid}] core_worker_process.cc:1: Constructing CoreWorker\n"
    )
    (logs / f"worker-abc{pid}-01000000-{pid}.out").write_text(out)
    (logs / f"worker-abc{pid}-01000000-{pid}.err").write_text(err)


def test_processes_are_named_timed_and_their_top_level_imports_summed(tmp_path):
    controller_out = ":job_id:01000000\n:actor_name:TrainController\n"
    reader_out = ":task_name:MapBatches(read_transform_shard)\n"
    _process(tmp_path, 11, "2026-12-01 22:15:05,738", controller_out, IMPORTS)
    _process(tmp_path, 12, "2026-12-01 22:15:33,546", reader_out, "")
    (tmp_path / "python-core-worker-bad_13.log").write_text("no timestamp here\n")
    found = ray_startup._processes(tmp_path)
    assert [q["pid"] for q in found] == [11, 12]  # the one without a start time is left out
    controller, reader = found
    assert controller["role"] == "TrainController"
    assert reader["role"] == "MapBatches(read_transform_shard)"
    # the top-level imports only (logo_train.worker 3.0 s + ray.train 0.25 s), not torch again
    assert controller["import_s"] == 3.25 and reader["import_s"] == 0
    start = datetime(2026, 12, 1, 22, 15, 5, 738000).timestamp()
    assert abs(controller["started"] - start) < 1e-3
    assert round(reader["started"] - controller["started"], 3) == 27.808
