"""The whole job behind ``logo-train run``: one stage after another, one line per stage.

Stages: data (render or ingest, shards, contact sheet), tune (Ray Tune + Optuna, when
``tune.enabled``), train (Ray Train, every backbone, with the tuned parameters), audit
(suspected wrong labels, per backbone), clean (when ``train.clean.mode`` is not 'none': drop or
relabel what the audit suspects and train the same backbone again), benchmark (every best
checkpoint on the test split, in a Ray task) and report (``<run dir>/report/``: table,
JSON/Parquet, plots, suspected labels).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

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


def _audit_cpus(cfg: Config) -> float:
    """CPUs of one audit task. On GPU a task takes one GPU and a worker's CPUs; on a fixed CPU
    cluster the largest node's CPUs up to 4 (its torch threads: the stage runs alone, and 2
    threads audit ~1.5x faster than 1 on a 2-core machine); with ``train.autoscale`` one
    worker's CPUs, which the node types are sized for."""
    import ray

    tc = cfg.train
    if tc.use_gpu or tc.autoscale:
        return min(tc.cpus_per_worker, 1.0)
    # one task runs on one node: the largest node's CPUs (a task asking for the cluster's
    # total would never be scheduled on a cluster of small nodes)
    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    return max(1, min(int(max(nodes, default=1.0)), 4))


def _audit_one(cfg: Config, result: BackboneResult, shards_uri: str, out_uri: str) -> AuditResult:
    from logo_train.audit import audit_on_ray

    audit = audit_on_ray(
        result.checkpoint,
        shards_uri,
        out_uri,
        num_cpus=_audit_cpus(cfg),
        num_gpus=min(cfg.train.gpus_per_worker, 1.0),
        batch_size=cfg.train.eval_batch_size,
    )
    for line in audit.lines():
        print(line.replace("[audit]", f"[audit] {result.label}:", 1))
    return audit


def _audit(cfg: Config, uri: str, training: list[BackboneResult]) -> dict[str, AuditResult]:
    """The label audit of every trained backbone, each as a Ray task (on a cluster it runs on
    a worker node next to the checkpoint's storage), one after another;
    ``<run dir>/audit/<backbone>/suspected_labels.parquet`` and ``.png``."""
    return {r.label: _audit_one(cfg, r, uri, audit_dir(cfg, r.backbone)) for r in training}


def clean_dir(cfg: Config, backbone: str, round: int) -> str:
    return join(cfg.run_dir, f"clean/{backbone}/round{round}")


def _clean(
    cfg: Config,
    uri: str,
    training: list[BackboneResult],
    searches: dict[str, SearchResult],
) -> tuple[list[BackboneResult], dict[str, AuditResult]]:
    """``train.clean``: for the best backbone on validation (or ``train.clean.backbones``),
    ``rounds`` times: act on the last audit (``logo_train.clean``), write the cleaned train
    split to ``<run>/clean/<backbone>/round<r>/data``, train the backbone again with its
    recipe (and tuned parameters; ``train.clean.loss`` when set) there, and audit the new
    model on the cleaned split. A round the cleaning refuses (it would empty a class, or act
    on more than ``train.clean.max_fraction``), or that would act on no row (the labels look
    clean: training again on the same data is time for nothing), is printed with the reason
    and recorded in ``clean/summary.json``; the run goes on with the models trained so far."""
    import pyarrow.parquet as pq

    from logo_train.audit import SUSPECTED_PARQUET
    from logo_train.bench import write_json
    from logo_train.clean import (
        CleaningError,
        cleaning_table,
        plan_from_audit,
        round_loss,
        write_cleaned_shards,
        write_cleaning,
    )
    from logo_train.data.shards import read_manifest
    from logo_train.train import train_backbones
    from logo_train.tune import tuned_configs

    cc = cfg.train.clean
    by_backbone = {r.backbone: r for r in training}
    missing = [b for b in cc.backbones if b not in by_backbone]
    if missing:
        raise ValueError(f"train.clean.backbones {missing} were not trained in this run")
    if not training:
        raise ValueError("stage 'clean' needs trained backbones (stage 'train')")
    chosen = cc.backbones or [max(training, key=lambda r: r.best_val_macro_f1).backbone]
    tuned = tuned_configs(cfg, searches) if searches else {}
    results, audits, refused = [], {}, []
    for backbone in chosen:
        own = tuned.get(backbone) or cfg.for_backbone(backbone)
        loss_before = own.train.loss
        source, audit_uri, last = uri, audit_dir(cfg, backbone), by_backbone[backbone]
        for round in range(2, cc.rounds + 2):
            folder = clean_dir(cfg, backbone, round)
            manifest = read_manifest(source)
            fs, path = resolve(join(audit_uri, SUSPECTED_PARQUET))
            ranked = pq.read_table(path, filesystem=fs)
            try:
                plan = plan_from_audit(ranked, manifest, cc, own.train.batch_size)
            except CleaningError as e:  # the round stops; the models trained so far stand
                print(f"[clean] {backbone} round {round} refused: {e}")
                refused.append({"backbone": backbone, "round": round, "reason": str(e)})
                break
            if plan.dropped + plan.relabelled == 0:  # the same data again: nothing to learn
                why = f"the audit acts on no label ({plan.line()}): the data is unchanged"
                print(f"[clean] {backbone} round {round} not trained: {why}")
                refused.append({"backbone": backbone, "round": round, "reason": why})
                break
            data_uri = join(folder, "data")
            cleaned = write_cleaned_shards(source, data_uri, ranked["id"].to_pylist(), plan)
            summary = _cleaning_summary(plan, ranked, manifest, cleaned, last, source)
            loss, why = round_loss(cc, own.train.loss, plan)
            bcfg = replace(own, train=replace(own.train, loss=loss))
            summary.update(loss_before=loss_before, loss=loss, loss_why=why)
            write_cleaning(folder, cleaning_table(ranked, plan, manifest.classes), summary)
            print(f"[clean] {backbone} round {round}: {plan.line()}")
            print(f"[clean] {backbone} round {round} trains with {loss} ({why})")
            if "flipped_acted_on" in summary:
                print(
                    f"[clean] {backbone} round {round}: {summary['flipped_acted_on']} of the "
                    f"{summary['flipped_before']} flipped labels dropped or relabelled "
                    f"({summary['relabelled_right']} of {plan.relabelled} relabelled to the true "
                    f"class); wrong labels left: {summary['flipped_after']} of "
                    f"{cleaned.split_rows('train')}"
                )
            if plan.thin_classes:
                print(
                    f"[clean] {backbone} round {round}: class(es) {plan.thin_classes} lost more "
                    f"than half their rows or fell below one batch ({bcfg.train.batch_size}); "
                    "trained on as they are"
                )
            done, failures = train_backbones(
                {backbone: bcfg}, data_uri, cleaned,
                name=f"round{round}", storage_path=join(folder, "train"), echo=print,
                tensorboard_uri=join(cfg.run_dir, f"tensorboard/{backbone}-round{round}"),
            )  # fmt: skip
            if failures:
                raise RuntimeError(f"cleaning round {round} of {backbone} failed: {failures}")
            last = done[0]
            last.round, last.cleaning = round, summary
            print("[clean] " + last.line())
            audit_uri = join(folder, "audit")
            audits[last.label] = _audit_one(cfg, last, data_uri, audit_uri)
            results.append(last)
            source, loss_before = data_uri, bcfg.train.loss
    write_json(
        {"results": [asdict(r) for r in results], "refused": refused},
        join(cfg.run_dir, "clean/summary.json"),
    )
    return results, audits


def _cleaning_summary(plan, ranked, manifest, cleaned, trained, source: str) -> dict:
    """The counts of a cleaning round (and, on the embedded data, how many of its actions hit
    a really wrong label)."""
    import numpy as np

    out = {
        "mode": plan.mode,
        "rule": plan.rule,
        "rows_before": len(plan.action),
        "rows_after": cleaned.split_rows("train"),
        "dropped": plan.dropped,
        "relabelled": plan.relabelled,
        "thin_classes": plan.thin_classes,
        "from_model": trained.label,
        "from_shards": source,
    }
    if manifest.has_truth and "is_noisy" in ranked.column_names:
        noisy = np.asarray(ranked["is_noisy"].to_pylist(), bool)
        index = {n: i for i, n in enumerate(manifest.classes)}
        truth = np.asarray([index[n] for n in ranked["true_label"].to_pylist()])
        relabelled = plan.action == "relabelled"
        out.update(
            flipped_before=int(noisy.sum()),
            flipped_acted_on=int((plan.suspected & noisy).sum()),
            clean_acted_on=int((plan.suspected & ~noisy).sum()),
            relabelled_right=int((relabelled & (plan.labels == truth)).sum()),
            flipped_after=int(cleaned.noisy_counts.get("train", 0)),
        )
    return out


def train_stage(cfg: Config, progress: bool = True) -> RunResult:
    """``logo-train train``: shards (made or reused), every backbone, the label audit and (with
    ``train.clean.mode``) the cleaning round."""
    return run(cfg, progress=progress, stages=("data", "train", "audit", "clean"))


def tune_stage(cfg: Config, progress: bool = True) -> RunResult:
    """``logo-train tune``: shards (made or reused) and the search(es) ``tune.scope`` asks for."""
    return run(cfg, progress=progress, stages=("data", "tune"))


def report_dir(cfg: Config) -> str:
    return join(cfg.run_dir, "report")


def _training_rows(cfg: Config, training: list[BackboneResult]) -> list[dict]:
    """The models to benchmark: ``training`` (this invocation's), else the run's
    ``train/summary.json`` and, when the run has one, ``clean/summary.json``."""
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
    cleaned = join(cfg.run_dir, "clean/summary.json")
    if exists(cleaned):
        rows += json.loads(read_bytes(cleaned))["results"]
    return rows


def _audit_summaries(cfg: Config, rows: list[dict]) -> dict[str, dict]:
    """Each model's audit summary, by its label (``checkpoint.run_label``)."""
    from logo_train.audit import SUMMARY_JSON
    from logo_train.checkpoint import run_label
    from logo_train.data.shards import exists, read_bytes

    out = {}
    for row in rows:
        r = row.get("round", 1)
        folder = (
            audit_dir(cfg, row["backbone"])
            if r <= 1
            else join(clean_dir(cfg, row["backbone"], r), "audit")
        )
        uri = join(folder, SUMMARY_JSON)
        if exists(uri):
            out[run_label(row["backbone"], r)] = json.loads(read_bytes(uri))
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
    audits = _audit_summaries(cfg, rows)
    data = benchmark_run(
        rows,
        shards_uri or shards_location(cfg),
        cfg.benchmark,
        run_name=cfg.name,
        audits=audits,
        eval_batch_size=cfg.train.eval_batch_size,
        real_eval=cfg.data.real_eval,
        real_outside=cfg.data.real_outside,
        out_uri=report_dir(cfg),
    )
    folder = report_dir(cfg)
    write_json(data, join(folder, BENCHMARK_JSON))
    _copy_suspected(cfg, data, folder)
    if report:
        write_report(folder)
    return folder


def _copy_suspected(cfg: Config, data: dict, folder: str) -> None:
    """The best backbone's suspected-label list and contact sheet, into the report folder.
    When a cleaning round acted on that backbone's audit, the list is the round's
    ``cleaning.parquet``: the audit's ranking with what was done to each label (``action``:
    kept, dropped or relabelled; ``train_label``)."""
    from logo_train.audit import SUSPECTED_PARQUET, SUSPECTED_PNG
    from logo_train.clean import CLEANING_PARQUET
    from logo_train.data.shards import is_file, read_bytes
    from logo_train.report import best_entry

    best = best_entry(data)["backbone"]
    names = (SUSPECTED_PARQUET, SUSPECTED_PNG)
    sources = {name: join(audit_dir(cfg, best), name) for name in names}
    cleaning = join(clean_dir(cfg, best, 2), CLEANING_PARQUET)
    if is_file(cleaning):
        sources[SUSPECTED_PARQUET] = cleaning
    for name, src in sources.items():
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
        exported = export_model(
            best["checkpoint"], tmp, metrics=metrics, calibration=best.get("calibration")
        )
        for f in sorted(exported.iterdir()):
            write_bytes(join(out, f.name), f.read_bytes())
    return out


def _print_summary(result: RunResult, folder: str) -> None:
    """The run's stage times and the benchmark table's headline columns."""
    from logo_train.report import best_entry, load, name, selected_on, start_word

    data, _ = load(folder)
    print("\n=== summary " + "=" * 68)
    print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_seconds.items()))
    print(
        f"{'backbone':<22} {'starts from':<11} {'px':>4} {'macro F1':>8} {'accuracy':>8} "
        f"{'p50 ms':>8} {'ONNX p50 ms':>11} {'images/s':>9} {'MFLOPs':>8}"
    )
    for e in data["backbones"]:
        onnx = f"{e['onnx']['latency_ms_p50']:.2f}" if e.get("onnx") else "-"
        print(
            f"{name(e):<22} {start_word(e):<11} {e['image_size']:>4} "
            f"{e['metrics']['macro_f1']:8.3f} {e['metrics']['accuracy']:8.3f} "
            f"{e['eager']['latency_ms_p50']:8.2f} {onnx:>11} "
            f"{e['eager']['throughput_images_per_s']:9.0f} {e['flops'] / 1e6:8.1f}"
        )
    print(
        f"best: {name(best_entry(data))} (chosen on {selected_on(data)} macro-F1; table: "
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
    if "clean" in stages and cfg.train.clean.enabled:
        if "audit" not in stages:
            raise ValueError("stage 'clean' needs stage 'audit' (it acts on the new audit)")
        with stage("clean", timings):
            result.cleaned, audits = _clean(cfg, uri, result.training, result.searches)
            result.audits.update(audits)
    if "benchmark" in stages and cfg.benchmark.enabled:
        with stage("benchmark", timings):
            models = result.training + result.cleaned
            result.report_dir = benchmark_stage(cfg, models, uri, report=False)
    if "report" in stages and cfg.benchmark.enabled:
        from logo_train.report import write_report

        result.report_dir = result.report_dir or report_dir(cfg)
        with stage("report", timings):
            write_report(result.report_dir)
            export_best(result.report_dir)
        _print_summary(result, result.report_dir)
    return result
