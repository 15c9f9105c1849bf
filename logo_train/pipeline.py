"""The whole job behind ``logo-train run``: one stage after another, one line per stage.

Stages: data (render or ingest, shards, contact sheet), tune (Ray Tune + Optuna, when
``tune.enabled``), train (Ray Train, every backbone, with the tuned parameters), audit
(suspected wrong labels, per backbone), benchmark (every best checkpoint on the test split, in a
Ray task) and report (``<run dir>/report/``: table, JSON/Parquet, plots, suspected labels).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from logo_train.audit import AuditResult
from logo_train.config import STAGES, Config, dump_config
from logo_train.data.prepare import prepare_data
from logo_train.data.preview import CONTACT_SHEET, summary_table
from logo_train.data.shards import Manifest, join, resolve, write_bytes
from logo_train.train import BackboneResult
from logo_train.tune import SearchResult

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: str
    shards_uri: str
    manifest: Manifest
    searches: dict[str, SearchResult] = field(default_factory=dict)
    training: list[BackboneResult] = field(default_factory=list)
    audits: dict[str, AuditResult] = field(default_factory=dict)
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


def _tune(cfg: Config, uri: str, manifest: Manifest) -> dict[str, SearchResult]:
    from logo_train.raysetup import init_ray
    from logo_train.tune import tune_all

    init_ray()
    searches = tune_all(cfg, uri, manifest)
    for result in searches.values():
        print(f"[tune] trials: {join(result.path, 'trials.md')}")
        print(f"[tune] best config: {join(result.path, 'best_config.yaml')}")
    return searches


def _train(
    cfg: Config, uri: str, manifest: Manifest, searches: dict[str, SearchResult]
) -> list[BackboneResult]:
    from logo_train.raysetup import init_ray
    from logo_train.train import train_all
    from logo_train.tune import tuned_configs

    init_ray()
    per_backbone = tuned_configs(cfg, searches) if searches else None
    results = train_all(cfg, uri, manifest, per_backbone=per_backbone)
    print(f"training summary: {join(cfg.run_dir, 'train/summary.json')}")
    print(f"tensorboard --logdir {join(cfg.run_dir, 'tensorboard')}")
    return results


def audit_dir(cfg: Config, backbone: str) -> str:
    return join(cfg.run_dir, f"audit/{backbone}")


def _audit(cfg: Config, uri: str, training: list[BackboneResult]) -> dict[str, AuditResult]:
    """The label audit of every trained backbone, each as a Ray task, one after another;
    ``<run dir>/audit/<backbone>/suspected_labels.parquet`` and ``.png``. On GPU a task takes
    one GPU; on a fixed CPU cluster the largest node's CPUs up to 4 (its torch threads: the
    stage runs alone, and 2 threads audit ~1.5x faster than 1 on a 2-core machine); with
    ``train.autoscale`` one worker's CPUs, which the node types are sized for."""
    import ray

    from logo_train.audit import audit_on_ray

    tc = cfg.train
    num_cpus = min(tc.cpus_per_worker, 1.0)
    if not (tc.use_gpu or tc.autoscale):
        # one task runs on one node: the largest node's CPUs (a task asking for the cluster's
        # total would never be scheduled on a cluster of small nodes)
        nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
        num_cpus = max(1, min(int(max(nodes, default=1.0)), 4))
    audits = {}
    for result in training:
        audits[result.backbone] = audit_on_ray(
            result.checkpoint,
            uri,
            audit_dir(cfg, result.backbone),
            num_cpus=num_cpus,
            num_gpus=min(tc.gpus_per_worker, 1.0),
            batch_size=tc.eval_batch_size,
        )
        for line in audits[result.backbone].lines():
            print(line.replace("[audit]", f"[audit] {result.backbone}:", 1))
    return audits


def train_stage(cfg: Config, progress: bool = True) -> RunResult:
    """``logo-train train``: shards (made or reused), every backbone, the label audit."""
    return run(cfg, progress=progress, stages=("data", "train", "audit"))


def tune_stage(cfg: Config, progress: bool = True) -> RunResult:
    """``logo-train tune``: shards (made or reused) and the search(es) ``tune.scope`` asks for."""
    return run(cfg, progress=progress, stages=("data", "tune"))


def report_dir(cfg: Config) -> str:
    return join(cfg.run_dir, "report")


def _training_rows(cfg: Config, training: list[BackboneResult]) -> list[dict]:
    if training:
        return [asdict(r) for r in training]
    from logo_train.data.shards import exists, read_bytes

    summary = join(cfg.run_dir, "train/summary.json")
    if not exists(summary):
        raise FileNotFoundError(
            f"{summary} not found: train first (logo-train run, or logo-train train)"
        )
    rows = json.loads(read_bytes(summary))["results"]
    if not rows:
        raise ValueError(f"{summary} lists no trained backbone")
    return rows


def _audit_summaries(cfg: Config, backbones: list[str]) -> dict[str, dict]:
    from logo_train.audit import SUMMARY_JSON
    from logo_train.data.shards import exists, read_bytes

    out = {}
    for backbone in backbones:
        uri = join(audit_dir(cfg, backbone), SUMMARY_JSON)
        if exists(uri):
            out[backbone] = json.loads(read_bytes(uri))
    return out


def benchmark_stage(
    cfg: Config,
    training: list[BackboneResult] | None = None,
    shards_uri: str | None = None,
    report: bool = True,
) -> str:
    """Benchmark every trained backbone's best checkpoint (``train/summary.json`` when
    ``training`` is not given), write ``report/benchmark.json`` and (``report``) the report;
    returns the report folder."""
    from logo_train.bench import BENCHMARK_JSON, benchmark_run, write_json
    from logo_train.data.prepare import shards_location
    from logo_train.raysetup import init_ray
    from logo_train.report import write_report

    rows = _training_rows(cfg, training or [])
    init_ray()
    audits = _audit_summaries(cfg, [r["backbone"] for r in rows])
    data = benchmark_run(
        rows,
        shards_uri or shards_location(cfg),
        cfg.benchmark,
        run_name=cfg.name,
        audits=audits,
        eval_batch_size=cfg.train.eval_batch_size,
    )
    folder = report_dir(cfg)
    write_json(data, join(folder, BENCHMARK_JSON))
    _copy_suspected(cfg, data, folder)
    if report:
        write_report(folder)
    return folder


def _copy_suspected(cfg: Config, data: dict, folder: str) -> None:
    """The best backbone's suspected-label list and contact sheet, into the report folder."""
    from logo_train.audit import SUSPECTED_PARQUET, SUSPECTED_PNG
    from logo_train.data.shards import is_file, read_bytes
    from logo_train.report import best_entry

    best = best_entry(data)["backbone"]
    for name in (SUSPECTED_PARQUET, SUSPECTED_PNG):
        src = join(audit_dir(cfg, best), name)
        if is_file(src):
            write_bytes(join(folder, name), read_bytes(src))


def export_best(folder: str) -> str:
    """``<report>/model/``: the best backbone (chosen on validation) as a self-contained ONNX
    model + model.json, with its test metrics; what ``logo-train predict`` takes."""
    from logo_train.predict import entry_metrics, export_model
    from logo_train.report import best_entry, load

    data, _ = load(folder)
    best = best_entry(data)
    metrics = entry_metrics(data, best)
    out = join(folder, "model")
    with tempfile.TemporaryDirectory() as tmp:  # then copied: the report may be a URI
        exported = export_model(best["checkpoint"], tmp, metrics=metrics)
        for f in sorted(exported.iterdir()):
            write_bytes(join(out, f.name), f.read_bytes())
    return out


def _print_summary(result: RunResult, folder: str) -> None:
    """The run's stage times and the benchmark table's headline columns."""
    from logo_train.report import best_entry, load, selected_on

    data, _ = load(folder)
    print("\n=== summary " + "=" * 68)
    print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_seconds.items()))
    print(
        f"{'backbone':<22} {'macro F1':>8} {'accuracy':>8} {'p50 ms':>8} {'ONNX p50 ms':>11} "
        f"{'images/s':>9} {'MFLOPs':>8}"
    )
    for e in data["backbones"]:
        onnx = f"{e['onnx']['latency_ms_p50']:.2f}" if e.get("onnx") else "-"
        print(
            f"{e['backbone']:<22} {e['metrics']['macro_f1']:8.3f} {e['metrics']['accuracy']:8.3f} "
            f"{e['eager']['latency_ms_p50']:8.2f} {onnx:>11} "
            f"{e['eager']['throughput_images_per_s']:9.0f} {e['flops'] / 1e6:8.1f}"
        )
    print(
        f"best: {best_entry(data)['backbone']} (chosen on {selected_on(data)} macro-F1; table: "
        f"{data['split']} split, {len(data['classes'])} classes)"
    )
    print(f"report folder: {folder}  (benchmark.md, plots, suspected_labels.parquet)")
    from logo_train.data.shards import is_dir

    if is_dir(join(folder, "model")):
        print(f"model: {join(folder, 'model')}  (logo-train predict --model {folder}/model ...)")


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
    if "data" in stages:
        with stage("data", timings):
            uri, manifest = _data(cfg, overwrite_data, progress)
    else:  # the shards the checkpoints were made on, or a refusal naming what changed
        from logo_train.data.prepare import existing_data

        uri, manifest = existing_data(cfg)
    result = RunResult(cfg.run_dir, uri, manifest, stage_seconds=timings)
    if "tune" in stages and (cfg.tune.enabled or stages == ("data", "tune")):
        with stage("tune", timings):
            result.searches = _tune(cfg, uri, manifest)
        if not result.complete:
            return result
    if "train" in stages:
        with stage("train", timings):
            result.training = _train(cfg, uri, manifest, result.searches)
    if "audit" in stages:
        if "train" not in stages:
            raise ValueError("stage 'audit' needs stage 'train' (it audits the new checkpoints)")
        with stage("audit", timings):
            result.audits = _audit(cfg, uri, result.training)
    if "benchmark" in stages and cfg.benchmark.enabled:
        with stage("benchmark", timings):
            result.report_dir = benchmark_stage(cfg, result.training, uri, report=False)
    if "report" in stages and cfg.benchmark.enabled:
        from logo_train.report import write_report

        result.report_dir = result.report_dir or report_dir(cfg)
        with stage("report", timings):
            write_report(result.report_dir)
            export_best(result.report_dir)
        _print_summary(result, result.report_dir)
    return result
