"""One driver per run folder: a second run refuses naming the first; a dead driver's lock is
taken over (real processes, a real SIGKILL)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logo_train.cli import main
from logo_train.runlock import STALE_S, RunLocked, acquire, run_lock

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from logo_train.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _data_run(tmp_path) -> list[str]:
    sets = [
        f"output_dir={tmp_path}",
        "data.synth.images_per_class=4",
        "data.synth.imbalance_ratio=2",
        "data.synth.val_per_class=1",
        "data.synth.test_per_class=1",
        "data.synth.image_size=24",
    ]
    config = ["--config", str(ROOT / "configs/quick.yaml"), "--no-progress"]
    return ["run", "--stages", "data", *config, *[a for s in sets for a in ("--set", s)]]


def _hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_refuses_and_a_killed_drivers_lock_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "quick"
    holder = _hold(run_dir)
    try:
        assert main(_data_run(tmp_path)) == 2
        err = capsys.readouterr().err
        assert f"{run_dir} is in use by another run (pid {holder.pid} on" in err
        assert not (run_dir / "data").exists()  # refused before any work
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert main(_data_run(tmp_path)) == 0
        out = capsys.readouterr().out
        assert f"taking over {run_dir}/run.lock: its process {holder.pid} is gone" in out
        assert (run_dir / "data/manifest.json").is_file()
        assert not (run_dir / "run.lock").exists()  # released when the run ended
    finally:
        holder.kill()


def test_a_lock_from_another_host_is_stale_only_without_heartbeat(tmp_path):
    lock = tmp_path / "run.lock"
    now = time.time()
    other = {"pid": 1, "host": "elsewhere", "started": now, "command": "logo-train run"}
    lock.write_text(json.dumps({**other, "heartbeat": now - 5}))
    with pytest.raises(RunLocked, match="pid 1 on elsewhere"):
        acquire(str(tmp_path), echo=lambda line: None)
    lock.write_text(json.dumps({**other, "heartbeat": now - STALE_S - 1}))
    said = []
    info = acquire(str(tmp_path), echo=said.append)
    assert info.pid == os.getpid() and info.host == socket.gethostname()
    assert said and "no heartbeat for" in said[0]


def test_the_lock_is_released_on_an_error_and_its_heartbeat_refreshed(tmp_path):
    with (
        pytest.raises(RuntimeError, match="boom"),
        run_lock(str(tmp_path), heartbeat_s=0.1) as info,
    ):
        time.sleep(0.35)
        held = json.loads((tmp_path / "run.lock").read_text())
        assert held["heartbeat"] > info.started
        raise RuntimeError("boom")
    assert not (tmp_path / "run.lock").exists()
