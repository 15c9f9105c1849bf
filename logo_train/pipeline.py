"""The whole job behind ``logo-train run``: one stage after another, one line per stage.

Stages so far: data (render or ingest, shards, contact sheet). Training, tuning, the label
audit, the benchmark and the report join here as they land (see the issues).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from logo_train.config import Config, dump_config
from logo_train.data.prepare import prepare_data
from logo_train.data.preview import CONTACT_SHEET, summary_table
from logo_train.data.shards import Manifest, join, resolve, write_bytes

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: str
    shards_uri: str
    manifest: Manifest
    stage_seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def stage(name: str, timings: dict[str, float], echo=print) -> Iterator[None]:
    """Print ``[stage] name ...`` and, when done, the elapsed time on one line."""
    echo(f"[stage] {name} ...", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    echo(f"[stage] {name} done in {timings[name]:.1f} s", flush=True)


def run(cfg: Config, *, overwrite_data: bool = False, progress: bool = True) -> RunResult:
    """Run every stage for ``cfg``; results go to ``cfg.run_dir``."""
    fs, path = resolve(cfg.run_dir)
    fs.create_dir(path, recursive=True)
    write_bytes(join(cfg.run_dir, "config.yaml"), dump_config(cfg).encode())
    timings: dict[str, float] = {}
    with stage("data", timings):
        uri, manifest, reused = prepare_data(cfg, overwrite=overwrite_data, progress=progress)
        if reused:
            print(f"reusing shards at {uri} (same parameters; --overwrite-data re-makes them)")
        print(summary_table(manifest))
        print(f"shards: {uri}\ncontact sheet: {join(uri, CONTACT_SHEET)}")
    return RunResult(cfg.run_dir, uri, manifest, timings)
