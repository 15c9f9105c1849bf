"""The whole job behind ``logo-train run``: the stages of ``logo_train.stages.TABLE``, one
after another, one line per stage. Each stage's work lives with its owner (``data.prepare``,
``tune.tune_stage``, ``train.train_stage``, ``audit.audit_stage``, ``clean.clean_stage``,
``evaluate.benchmark_models``, ``report.write_report``); this module holds the table's bodies
(each passes the run's results on) and states (how far a run folder got, for the resumed
run's first line).

The same command again continues a run (``logo_train.resume``): each stage keeps what it
finished and goes on from where it stopped; a changed config refuses unless ``fresh``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from logo_train import tracking, train, tune
from logo_train.audit import AuditResult, audit_stage, finished_audit
from logo_train.clean import clean_stage, finished_cleaning, round_run
from logo_train.config import Config, dump_config
from logo_train.data.prepare import existing_data, prepare_data, shards_location
from logo_train.data.preview import CONTACT_SHEET, summary_table
from logo_train.data.shards import MANIFEST, Manifest, is_incomplete
from logo_train.evaluate import benchmark_models, finished_benchmark, trained_models
from logo_train.exported import export_best
from logo_train.progress import backbone_progress
from logo_train.report import print_summary, write_report
from logo_train.results import best_entry, load, name
from logo_train.resume import check_config, describe, start_fresh
from logo_train.runlock import run_lock
from logo_train.stages import STAGES, check_stages, selected
from logo_train.storage import exists, join, write_bytes
from logo_train.train import BackboneResult, render_ahead, train_stage
from logo_train.tune import SearchResult, searches_to_run, tune_stage, tuned_configs


@dataclass
class RunResult:
    run_dir: str
    shards_uri: str = ""
    manifest: Manifest | None = None
    searches: dict[str, SearchResult] = field(default_factory=dict)
    training: list[BackboneResult] = field(default_factory=list)
    audits: dict[str, AuditResult] = field(default_factory=dict)
    """Per model label (``BackboneResult.label``)."""
    cleaned: list[BackboneResult] = field(default_factory=list)
    """The cleaning rounds' models (round 2, 3, ...)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    report_dir: str = ""
    overwrite_data: bool = False
    progress: bool = True
    stages: tuple[str, ...] = STAGES

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
    check_stages(cfg, stages)
    tracking.settings(cfg)  # a run in object storage without a tracking server: refused now
    with run_lock(cfg.run_dir):
        if fresh:
            start_fresh(cfg, stages)
        else:
            check_config(cfg, stages)
        print(describe(cfg, stages), flush=True)
        write_bytes(cfg.layout.config, dump_config(cfg).encode())
        result = RunResult(
            cfg.run_dir, overwrite_data=overwrite_data, progress=progress, stages=stages
        )
        if "data" not in stages:  # the shards the checkpoints were made on, or a refusal
            result.shards_uri, result.manifest = existing_data(cfg)
        for step in selected(cfg, stages):
            with stage(step.name, result.stage_seconds):
                go_on = step.run(cfg, result)
            if not go_on:
                break
        if result.report_dir and "report" in stages:
            print_summary(result.report_dir, result.stage_seconds)
        return result


# --- the table's bodies: (cfg, run) -> False to stop the run after it ---------------------------


def data_body(cfg: Config, result: RunResult) -> None:
    uri, manifest, reused = prepare_data(
        cfg, overwrite=result.overwrite_data, progress=result.progress
    )
    if reused:
        print(f"reusing shards at {uri} (same parameters; --overwrite-data re-makes them)")
    print(summary_table(manifest))
    print(f"shards: {uri}\ncontact sheet: {join(uri, CONTACT_SHEET)}")
    result.shards_uri, result.manifest = uri, manifest


def tune_body(cfg: Config, result: RunResult) -> bool:
    if "train" in result.stages and searches_to_run(cfg, result.shards_uri):
        render_ahead(cfg, result.shards_uri, result.manifest)
    result.searches = tune_stage(cfg, result.shards_uri, result.manifest)
    return result.complete  # an interrupted search: the later stages wait for its restore


def train_body(cfg: Config, result: RunResult) -> None:
    tuned = tuned_configs(cfg, result.searches) if result.searches else None
    result.training = train_stage(cfg, result.shards_uri, result.manifest, tuned)


def audit_body(cfg: Config, result: RunResult) -> None:
    result.audits = audit_stage(cfg, result.shards_uri, result.training)


def clean_body(cfg: Config, result: RunResult) -> None:
    result.cleaned, audits = clean_stage(cfg, result.shards_uri, result.training, result.searches)
    result.audits.update(audits)


def benchmark_body(cfg: Config, result: RunResult) -> None:
    models = result.training + result.cleaned
    benchmark_models(cfg, models, result.shards_uri, keep_finished=True)
    result.report_dir = cfg.layout.report
    logged = tracking.log_benchmark(cfg, load(result.report_dir)[0])
    if logged:
        print(f"[benchmark] MLflow: the benchmark row of {logged} model(s) in their runs")


def report_body(cfg: Config, result: RunResult) -> None:
    result.report_dir = cfg.layout.report
    write_report(result.report_dir)
    export_best(result.report_dir)
    where = tracking.settings(cfg)
    best = name(best_entry(load(result.report_dir)[0]))
    if tracking.log_report(cfg, result.report_dir, best):
        print(
            f"[report] MLflow: the report and the exported model in {best}'s run "
            f"(experiment {where['experiment']}, {where['uri']})"
        )


# --- the table's states: how far a run folder got, for the resumed run's first line -----------


def data_state(cfg: Config) -> str:
    uri = shards_location(cfg)
    if is_incomplete(uri):
        return "data: half-written, written again"
    return "data: done" if exists(join(uri, MANIFEST)) else "data: to do"


def tune_state(cfg: Config) -> str:
    paths = tune.search_paths(cfg, shards_location(cfg))
    done = [b for b, p in paths.items() if tune.finished_search(cfg, b, p)]
    started = [b for b, p in paths.items() if b not in done and exists(p)]
    if len(done) == len(paths):
        return "tune: done"
    return f"tune: {len(done)} of {len(paths)} search(es) done" + (
        f", {', '.join(started)} restored by Tune" if started else ""
    )


def train_state(cfg: Config) -> str:
    state = train.stage_progress(cfg)
    if all(p.done for p, _ in state):
        return "train: done"
    return "train: " + ", ".join(p.words(epochs) for p, epochs in state)


def audit_state(cfg: Config) -> str:
    models = train.trained(cfg)
    if not models:
        return "audit: to do"
    done = sum(
        finished_audit(cfg.layout.audit(m.backbone, m.round), m.checkpoint) is not None
        for m in models
    )
    return "audit: done" if done == len(models) else f"audit: {done} of {len(models)} done"


def clean_state(cfg: Config) -> str:
    if finished_cleaning(cfg):
        return "clean: done"
    rounds = []
    for backbone in cfg.train.clean.backbones or cfg.model.backbones:
        for r in range(2, cfg.train.clean.rounds + 2):
            folder = join(round_run(cfg, backbone, r), backbone)
            if exists(folder):
                rounds.append(f"round {r} of " + backbone_progress(folder, backbone).words())
            elif exists(cfg.layout.clean_round(backbone, r)):
                rounds.append(f"{backbone} round {r} started")
    return "clean: " + (", ".join(rounds) if rounds else "to do")


def benchmark_state(cfg: Config) -> str:
    """Done when the train stage finished and ``benchmark.json`` measured exactly its models
    (the cleaning rounds' included)."""
    done = train.trained(cfg) and finished_benchmark(cfg, trained_models(cfg))
    return "benchmark: done" if done else "benchmark: to do"


def report_state(cfg: Config) -> str:
    return "report: written again"


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
