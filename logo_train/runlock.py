"""One driver per run folder: ``<run>/run.lock`` (``RunLayout.lock``).

``logo-train run`` (and ``train``, ``tune``, the ``ray_jobs`` entrypoints over it) takes the
lock before it writes anything; a second run into the same folder refuses, naming the first
(its pid, host, command and when it started). The lock says who holds it and when it last said
so (``heartbeat``, refreshed every ``HEARTBEAT_S``), so a driver that died does not leave it
stuck: on the same host a lock whose process is gone is taken over at once; from another host
(a head node restarted, a job resubmitted elsewhere) one whose heartbeat is older than
``STALE_S``. The run releases it when it ends, also on an error.

On a local folder the lock file is created atomically (``O_EXCL``); on an object store
(s3://, gs://) there is no such primitive, so two drivers starting within the same second
could both believe they hold it: the lock guards against the common case, a run submitted
twice or restarted over a live one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from logo_train.layout import RunLayout
from logo_train.storage import exists, make_dir, read_json, resolve, write_json

HEARTBEAT_S = 30.0
STALE_S = 180.0
"""A lock not refreshed for this long is a dead driver's (six missed heartbeats)."""


class RunLocked(FileExistsError):
    """Another driver holds the run folder."""


@dataclass
class LockInfo:
    pid: int
    host: str
    started: float
    heartbeat: float
    command: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, started {when}: {self.command}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stale_reason(info: LockInfo, now: float | None = None) -> str | None:
    """Why ``info`` is a dead driver's lock (None: its driver may be running)."""
    now = time.time() if now is None else now
    if info.host == socket.gethostname():
        return None if _alive(info.pid) else f"its process {info.pid} is gone"
    if now - info.heartbeat > STALE_S:
        return f"no heartbeat for {now - info.heartbeat:.0f} s"
    return None


def _read(uri: str) -> LockInfo | None:
    try:
        return LockInfo(**read_json(uri))
    except (OSError, ValueError, TypeError):  # gone meanwhile, or half-written: not ours
        return None


def _create(uri: str, info: LockInfo) -> bool:
    """Write the lock if there is none; False when another driver created it first."""
    data = json.dumps(asdict(info), indent=2).encode()
    if "://" in uri:
        if exists(uri):
            return False
        write_json(uri, asdict(info))
        return True
    fs, path = resolve(uri)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def acquire(run_dir: str, echo=print) -> LockInfo:
    """Take ``<run_dir>/run.lock``; ``RunLocked`` naming the holder when a live driver has it."""
    make_dir(run_dir)
    uri = RunLayout(run_dir).lock
    now = time.time()
    mine = LockInfo(os.getpid(), socket.gethostname(), now, now, " ".join(sys.argv) or "python")
    for _ in range(3):  # a stale lock removed, then created again: a racing driver may win
        if _create(uri, mine):
            return mine
        held = _read(uri)
        if held is None:
            continue
        why = stale_reason(held)
        if why is None:
            raise RunLocked(
                f"{run_dir} is in use by another run ({held.describe()}); wait for it, stop it, "
                "or choose another output_dir / name"
            )
        echo(f"[run] taking over {uri}: {why} ({held.describe()})")
        fs, path = resolve(uri)
        fs.delete_file(path)
    raise RunLocked(f"{uri}: another driver keeps taking the lock; is a second run starting?")


def release(run_dir: str, info: LockInfo) -> None:
    """Remove the lock if it is still ``info``'s (a driver that took it over keeps it)."""
    uri = RunLayout(run_dir).lock
    held = _read(uri)
    if held is not None and (held.pid, held.host, held.started) == (
        info.pid,
        info.host,
        info.started,
    ):
        fs, path = resolve(uri)
        fs.delete_file(path)


@contextmanager
def run_lock(run_dir: str, echo=print, heartbeat_s: float = HEARTBEAT_S) -> Iterator[LockInfo]:
    """Hold the run folder's lock for the ``with`` block, refreshing its heartbeat."""
    info = acquire(run_dir, echo)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            held = _read(RunLayout(run_dir).lock)
            if held is None or (held.pid, held.started) != (info.pid, info.started):
                return  # taken over (we were thought dead): leave it to the new holder
            info.heartbeat = time.time()
            write_json(RunLayout(run_dir).lock, asdict(info))

    thread = threading.Thread(target=beat, daemon=True, name="run-lock-heartbeat")
    thread.start()
    try:
        yield info
    finally:
        stop.set()
        thread.join()
        release(run_dir, info)
