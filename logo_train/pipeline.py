"""The whole job behind ``logo-train run``: the list of stages, one after another, one line
per stage. Each stage's body lives with its owner:

=========  ===============================  ===========================================
stage      owner                            writes (``logo_train.layout``)
=========  ===============================  ===========================================
data       ``data.prepare.prepare_data``    the shards and their contact sheet
tune       ``tune.tune_stage``              ``tune/<backbone>-<hash>/`` (``tune.enabled``)
train      ``train.train_stage``            ``train/``, ``tensorboard/``
audit      ``audit.audit_stage``            ``audit/<backbone>/``
clean      ``clean.clean_stage``            ``clean/`` (``train.clean.mode`` not 'none')
benchmark  ``bench.benchmark_models``       ``report/benchmark.json``
report     ``report.write_report``          ``report/`` and ``report/model/``
=========  ===============================  ===========================================

The same command again continues a run (``logo_train.resume``): each stage keeps what it
finished and goes on from where it stopped; a changed config refuses unless ``fresh``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from logo_train.audit import AuditResult, audit_stage
from logo_train.bench import benchmark_models
from logo_train.clean import clean_stage
from logo_train.config import STAGES, Config, dump_config
from logo_train.data.prepare import existing_data, prepare_data, shards_location
from logo_train.data.preview import CONTACT_SHEET, summary_table
from logo_train.data.shards import Manifest
from logo_train.predict import export_best
from logo_train.report import print_summary, write_report
from logo_train.resume import check_config, describe, start_fresh
from logo_train.runlock import run_lock
from logo_train.storage import join, write_bytes
from logo_train.train import BackboneResult, train_stage
from logo_train.tune import SearchResult, tune_stage, tuned_configs


@dataclass
class RunResult:
    run_dir: str
    shards_uri: str
    manifest: Manifest
    searches: dict[str, SearchResult] = field(default_factory=dict)
    training: list[BackboneResult] = field(default_factory=list)
    audits: dict[str, AuditResult] = field(default_factory=dict)
    """Per model label (``BackboneResult.label``)."""
    cleaned: list[BackboneResult] = field(default_factory=list)
    """The cleaning rounds' models (round 2, 3, ...)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    report_dir: str = ""

    @property
    def complete(self) -> bool:
        """False when a search was interrupted (the later stages did not run)."""
        return all(s.complete for s in self.searches.values())


@contextmanager
def stage(name: str, timings: dict[str, float], echo=print) -> Iterator[None]:
    """Print ``[stage] name ...`` and, when done, the elapsed time on one line."""
    echo(f"[stage] {name} ...", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    echo(f"[stage] {name} done in {timings[name]:.1f} s", flush=True)


def run(
    cfg: Config,
    *,
    overwrite_data: bool = False,
    progress: bool = True,
    stages: tuple[str, ...] = STAGES,
    fresh: bool = False,
) -> RunResult:
    """Run the ``stages`` (default: all) for ``cfg``; results go to ``cfg.run_dir``, which
    this driver holds for the run (``run.lock``: a second run into it refuses, naming this
    one). A run folder that holds a run of the same config is continued (what its stages
    finished is kept; the first line says what); one of another config is refused, naming the
    fields, unless ``fresh`` (its stage outputs are deleted first)."""
    _check_stages(cfg, stages)
    with run_lock(cfg.run_dir):
        if fresh:
            start_fresh(cfg, stages)
        else:
            check_config(cfg, stages)
        print(describe(cfg, stages), flush=True)
        return _run_stages(cfg, overwrite_data, progress, stages)


def _run_stages(
    cfg: Config, overwrite_data: bool, progress: bool, stages: tuple[str, ...]
) -> RunResult:
    """``run``'s body, holding the run folder's lock."""
    write_bytes(cfg.layout.config, dump_config(cfg).encode())
    timings: dict[str, float] = {}
    if "data" in stages:
        with stage("data", timings):
            uri, manifest = _data(cfg, overwrite_data, progress)
    else:  # the shards the checkpoints were made on, or a refusal naming what changed
        uri, manifest = existing_data(cfg)
    result = RunResult(cfg.run_dir, uri, manifest, stage_seconds=timings)
    if "tune" in stages and (cfg.tune.enabled or stages == ("data", "tune")):
        with stage("tune", timings):
            result.searches = tune_stage(cfg, uri, manifest)
        if not result.complete:
            return result
    if "train" in stages:
        with stage("train", timings):
            tuned = tuned_configs(cfg, result.searches) if result.searches else None
            result.training = train_stage(cfg, uri, manifest, tuned)
    if "audit" in stages:
        with stage("audit", timings):
            result.audits = audit_stage(cfg, uri, result.training)
    if "clean" in stages and cfg.train.clean.enabled:
        with stage("clean", timings):
            result.cleaned, audits = clean_stage(cfg, uri, result.training, result.searches)
            result.audits.update(audits)
    if "benchmark" in stages and cfg.benchmark.enabled:
        with stage("benchmark", timings):
            benchmark_models(cfg, result.training + result.cleaned, uri, keep_finished=True)
            result.report_dir = cfg.layout.report
    if "report" in stages and cfg.benchmark.enabled:
        result.report_dir = cfg.layout.report
        with stage("report", timings):
            write_report(result.report_dir)
            export_best(result.report_dir)
        print_summary(result.report_dir, result.stage_seconds)
    return result


def _check_stages(cfg: Config, stages: tuple[str, ...]) -> None:
    """Known stage names, and each stage with the ones it needs."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    if "audit" in stages and "train" not in stages:
        raise ValueError("stage 'audit' needs stage 'train' (it audits the new checkpoints)")
    if "clean" in stages and cfg.train.clean.enabled and "audit" not in stages:
        raise ValueError("stage 'clean' needs stage 'audit' (it acts on the new audit)")


def _data(cfg: Config, overwrite: bool, progress: bool) -> tuple[str, Manifest]:
    uri, manifest, reused = prepare_data(cfg, overwrite=overwrite, progress=progress)
    if reused:
        print(f"reusing shards at {uri} (same parameters; --overwrite-data re-makes them)")
    print(summary_table(manifest))
    print(f"shards: {uri}\ncontact sheet: {join(uri, CONTACT_SHEET)}")
    return uri, manifest


def train_run(cfg: Config, progress: bool = True, fresh: bool = False) -> RunResult:
    """``logo-train train``: shards (made or reused), every backbone, the label audit and (with
    ``train.clean.mode``) the cleaning round."""
    return run(cfg, progress=progress, stages=("data", "train", "audit", "clean"), fresh=fresh)


def tune_run(cfg: Config, progress: bool = True, fresh: bool = False) -> RunResult:
    """``logo-train tune``: shards (made or reused) and the search(es) ``tune.scope`` asks for."""
    return run(cfg, progress=progress, stages=("data", "tune"), fresh=fresh)


def benchmark_stage(
    cfg: Config,
    training: list[BackboneResult] | None = None,
    shards_uri: str | None = None,
    report: bool = True,
) -> str:
    """``logo-train benchmark``: every trained model's best checkpoint (``train/summary.json``
    when ``training`` is not given) on the test split, ``report/benchmark.json`` and
    (``report``) the report; returns the report folder."""
    benchmark_models(cfg, training, shards_uri or shards_location(cfg))
    if report:
        write_report(cfg.layout.report)
    return cfg.layout.report
