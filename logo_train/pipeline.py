"""The whole job behind ``logo-train run``: one stage after another, one line per stage.

Stages so far: data (render or ingest, shards, contact sheet) and training (Ray Train, every
backbone). Tuning, the label audit, the benchmark and the report join here as they land.
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
from logo_train.train import BackboneResult

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: str
    shards_uri: str
    manifest: Manifest
    training: list[BackboneResult] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def stage(name: str, timings: dict[str, float], echo=print) -> Iterator[None]:
    """Print ``[stage] name ...`` and, when done, the elapsed time on one line."""
    echo(f"[stage] {name} ...", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    echo(f"[stage] {name} done in {timings[name]:.1f} s", flush=True)


def _write_config(cfg: Config) -> None:
    fs, path = resolve(cfg.run_dir)
    fs.create_dir(path, recursive=True)
    write_bytes(join(cfg.run_dir, "config.yaml"), dump_config(cfg).encode())


def _data(cfg: Config, overwrite: bool, progress: bool) -> tuple[str, Manifest]:
    uri, manifest, reused = prepare_data(cfg, overwrite=overwrite, progress=progress)
    if reused:
        print(f"reusing shards at {uri} (same parameters; --overwrite-data re-makes them)")
    print(summary_table(manifest))
    print(f"shards: {uri}\ncontact sheet: {join(uri, CONTACT_SHEET)}")
    return uri, manifest


def _train(cfg: Config, uri: str, manifest: Manifest) -> list[BackboneResult]:
    from logo_train.raysetup import init_ray
    from logo_train.train import train_all

    init_ray()
    results = train_all(cfg, uri, manifest)
    print(f"training summary: {join(cfg.run_dir, 'train/summary.json')}")
    print(f"tensorboard --logdir {join(cfg.run_dir, 'tensorboard')}")
    return results


def train_stage(cfg: Config, progress: bool = True) -> list[BackboneResult]:
    """``logo-train train``: shards (made or reused), then every backbone."""
    _write_config(cfg)
    timings: dict[str, float] = {}
    with stage("data", timings):
        uri, manifest = _data(cfg, False, progress)
    with stage("train", timings):
        return _train(cfg, uri, manifest)


STAGES = ("data", "train")


def run(
    cfg: Config,
    *,
    overwrite_data: bool = False,
    progress: bool = True,
    stages: tuple[str, ...] = STAGES,
) -> RunResult:
    """Run the ``stages`` (default: all) for ``cfg``; results go to ``cfg.run_dir``."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    _write_config(cfg)
    timings: dict[str, float] = {}
    with stage("data", timings):
        uri, manifest = _data(cfg, overwrite_data, progress)
    training = []
    if "train" in stages:
        with stage("train", timings):
            training = _train(cfg, uri, manifest)
    return RunResult(cfg.run_dir, uri, manifest, training, timings)
