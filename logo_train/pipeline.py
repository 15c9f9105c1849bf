"""The whole job behind ``logo-train run``: one stage after another, one line per stage.

Stages so far: data (render or ingest, shards, contact sheet), training (Ray Train, every
backbone) and the label audit (suspected wrong labels, per backbone). Tuning, the benchmark and
the report join here as they land.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from logo_train.audit import AuditResult
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
    audits: dict[str, AuditResult] = field(default_factory=dict)
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


def audit_dir(cfg: Config, backbone: str) -> str:
    return join(cfg.run_dir, f"audit/{backbone}")


def _audit(cfg: Config, uri: str, training: list[BackboneResult]) -> dict[str, AuditResult]:
    """The label audit of every trained backbone, each as a Ray task with the workers'
    resources; ``<run dir>/audit/<backbone>/suspected_labels.parquet`` and ``.png``."""
    from logo_train.audit import audit_on_ray

    tc = cfg.train
    audits = {}
    for result in training:
        audits[result.backbone] = audit_on_ray(
            result.checkpoint,
            uri,
            audit_dir(cfg, result.backbone),
            num_cpus=min(tc.cpus_per_worker, 1.0),
            num_gpus=min(tc.gpus_per_worker, 1.0),
            batch_size=tc.eval_batch_size,
        )
        for line in audits[result.backbone].lines():
            print(line.replace("[audit]", f"[audit] {result.backbone}:", 1))
    return audits


def train_stage(cfg: Config, progress: bool = True) -> RunResult:
    """``logo-train train``: shards (made or reused), every backbone, the label audit."""
    return run(cfg, progress=progress, stages=("data", "train", "audit"))


STAGES = ("data", "train", "audit")


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
    result = RunResult(cfg.run_dir, uri, manifest, stage_seconds=timings)
    if "train" in stages:
        with stage("train", timings):
            result.training = _train(cfg, uri, manifest)
    if "audit" in stages:
        if "train" not in stages:
            raise ValueError("stage 'audit' needs stage 'train' (it audits the new checkpoints)")
        with stage("audit", timings):
            result.audits = _audit(cfg, uri, result.training)
    return result
