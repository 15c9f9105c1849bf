"""Ray Tune + Optuna: search training parameters (by default the trust penalty's weight and the
class-weight power) with trials that run the train job's own loop.

Under Train V2 a ``TorchTrainer`` cannot be handed to ``Tuner``: each trial is a function
(``_trial``) that calls ``train.train_backbone``. A trial of one worker runs the loop in its
own process (``tune.trials_in_process``: no Ray Train worker group to start, the loop reports to
Tune and resumes from Tune's checkpoint); a trial of several workers is a Ray Train run with a
``TuneReportCallback``, so rank 0's per-epoch metrics reach Tune. Optuna's TPE (or random)
sampler proposes parameters, ASHA stops trials that trail at a rung, with the epoch as its time
unit.

One search is one Tune experiment, ``<run dir>/tune/<backbone>-<hash>``; the hash covers the
config, so re-running the same command finds the same experiment and restores it (finished
trials are not re-run) and a changed config starts a new one. Outputs next to Tune's own files:
``trials.parquet`` / ``trials.md``, ``best_config.yaml`` (accepted by ``logo-train train
--config``), ``search.png`` and per-trial TensorBoard files under ``tensorboard/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, fields
from typing import Any

from logo_train import tracking
from logo_train.config import Config, SearchParam, config_from_dict, config_to_dict, dump_config
from logo_train.data.shards import Manifest
from logo_train.plots import BEST_VAL, search_plot
from logo_train.raysetup import init_ray
from logo_train.storage import (
    absolute,
    exists,
    join,
    make_dir,
    read_json,
    resolve,
    write_bytes,
    write_json,
)
from logo_train.train import check_resources, shared_datasets, steps_per_epoch, train_backbone

log = logging.getLogger(__name__)

METRIC = BEST_VAL
"""What the sampler and ASHA maximise: the trial's best val macro-F1 so far (a running max,
so one noisy epoch does not decide a rung)."""
TRIAL_MEMORY = 256 * 2**20
"""Logical memory (bytes) each trial's driver function reserves."""
CONTEXT = "search.json"
TRIALS_PARQUET = "trials.parquet"
TRIALS_MD = "trials.md"
BEST_CONFIG = "best_config.yaml"
TRIAL_TENSORBOARD = "tensorboard"
"""Inside an experiment folder: each trial's event files, ``tensorboard/<trial id>``."""
PLOT = "search.png"
RESULT = "search_result.json"
"""Written when every trial of the search has ended: a run started again keeps the search
as it is (no Ray, no restore)."""


@dataclass
class SearchResult:
    backbone: str
    path: str
    """The Tune experiment folder (``logo-train tune --resume`` takes it)."""
    trials: list[dict[str, Any]]
    """One row per trial: trial_id, the parameters, best_val_macro_f1, epochs, stopped_early,
    status, seconds."""
    best_params: dict[str, float]
    best_val_macro_f1: float
    best_config: Config
    """The input config with the best parameters (full ``train.epochs``)."""
    complete: bool
    """False when the experiment was interrupted before every trial ended."""

    @property
    def trial_epochs(self) -> int:
        """Compute spent: epochs run over all trials."""
        return sum(int(row["epochs"]) for row in self.trials)

    def line(self) -> str:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.best_params.items())
        stopped = sum(bool(r["stopped_early"]) for r in self.trials)
        return (
            f"{self.backbone}: best val macro-F1 {self.best_val_macro_f1:.3f} with {params}; "
            f"{len(self.trials)} trials, {stopped} stopped early, "
            f"{self.trial_epochs} trial-epochs"
        )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- search space and parameters ---------------------------------------------------------------


def search_space(space: dict[str, SearchParam]) -> dict[str, Any]:
    """The config's ranges as Tune's search-space domains (OptunaSearch converts them)."""
    from ray import tune

    domains = {}
    for key, p in space.items():
        if p.kind == "loguniform":
            domains[key] = tune.loguniform(p.low, p.high)
        elif p.kind == "uniform":
            domains[key] = tune.uniform(p.low, p.high)
        elif p.kind == "int":
            domains[key] = tune.randint(int(p.low), int(p.high) + 1)
        else:
            domains[key] = tune.choice(list(p.values))
    return domains


def trial_epochs(cfg: Config) -> int:
    """Most epochs a trial runs (ASHA's max_t)."""
    return cfg.tune.epochs or cfg.train.epochs


def apply_params(cfg: Config, params: dict[str, Any], epochs: int | None = None) -> Config:
    """``cfg`` with ``train.<key> = value`` for every searched parameter (and ``epochs``),
    validated like a loaded config."""
    if epochs is not None:  # a trial: exactly this long (train.min_steps would stretch it)
        params = {**params, "epochs": epochs, "min_steps": 0}
    try:
        return cfg.with_train(**params)
    except ValueError as e:
        raise ValueError(f"searched parameter: {e}") from None


def experiment_name(cfg: Config, backbone: str, shards_uri: str) -> str:
    """``<backbone>-<hash of what the trials depend on>``: the same search finds its own
    experiment (the run's name and its benchmark settings do not count)."""
    data = config_to_dict(cfg)
    searched = {k: data[k] for k in ("data", "model", "augment", "train", "tune")}
    key = json.dumps(
        {"config": searched, "backbone": backbone, "shards": shards_uri}, sort_keys=True
    )
    return f"{backbone}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def in_process(cfg: Config) -> bool:
    """Whether a trial trains in its own process (one worker, ``tune.trials_in_process``)
    rather than as a Ray Train run."""
    return cfg.tune.trials_in_process and cfg.train.num_workers == 1


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial's function reserves: the worker's CPUs (and GPU) when it trains in its
    own process, else ``tune.trial_cpus`` for a driver that only waits on its Train workers
    (they take their own). Tune refuses an all-zero request: such a driver asks for a little
    memory."""
    tc = cfg.train
    if not in_process(cfg):
        return {"CPU": cfg.tune.trial_cpus, "memory": TRIAL_MEMORY}
    resources = {"CPU": tc.cpus_per_worker, "memory": TRIAL_MEMORY}
    if tc.use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    return resources


def _trial_cpus(cfg: Config) -> float:
    """CPUs a trial takes in all (its function and, as a Ray Train run, its workers)."""
    tc = cfg.train
    own = trial_resources(cfg)["CPU"]
    return own if in_process(cfg) else own + tc.num_workers * tc.cpus_per_worker


def concurrent_trials(cfg: Config) -> int:
    """``tune.max_concurrent_trials``, or (0) as many trials as the cluster's free resources
    fit; CPU-only training keeps as many CPUs again free for Ray Data."""
    import ray

    tc, t = cfg.train, cfg.tune
    if t.max_concurrent_trials:
        return t.max_concurrent_trials
    if tc.autoscale:  # the cluster grows with the queue; a few at once keeps TPE informed
        return min(t.num_samples, 4)
    resources = ray.cluster_resources()
    per_trial_cpu = _trial_cpus(cfg)
    fit = resources.get("CPU", 0.0) / (per_trial_cpu if tc.use_gpu else 2 * per_trial_cpu)
    if tc.use_gpu:
        fit = min(fit, resources.get("GPU", 0.0) / (tc.num_workers * tc.gpus_per_worker))
    return int(max(1, min(math.floor(fit), t.num_samples)))


def check_trial_resources(cfg: Config) -> None:
    """A trial = its driver (``tune.trial_cpus``) + the Train workers; Ray Data needs CPU too."""
    import ray

    check_resources(cfg)
    tc = cfg.train
    if tc.autoscale or tc.use_gpu or in_process(cfg):  # in process: check_resources's rule
        return
    cpus = ray.cluster_resources().get("CPU", 0.0)
    need = _trial_cpus(cfg)
    if cpus - need < 1:
        raise ValueError(
            f"config field 'tune.trial_cpus' = {cfg.tune.trial_cpus}: a trial takes {need:g} "
            f"CPUs (driver + {tc.num_workers} workers x {tc.cpus_per_worker}) of the cluster's "
            f"{cpus:g}, leaving less than the 1 CPU a Ray Data read task needs (the run would "
            "hang); use tune.trial_cpus: 0 or fewer worker CPUs"
        )


# --- the trial --------------------------------------------------------------------------------


@dataclass
class SearchContext:
    """What every trial of one search shares (handed to the trials as it is, through
    ``tune.with_parameters``); ``search_context.json`` in the experiment folder, from which
    ``resume`` restores it."""

    config: Config
    backbone: str
    shards_uri: str
    manifest: Manifest
    epochs: int
    """Most epochs a trial runs (``trial_epochs``)."""
    concurrency: int
    path: str
    """The experiment folder: ``<run>/tune/<backbone>-<hash>``."""

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "config": config_to_dict(self.config), "manifest": self.manifest.to_json()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchContext:
        config, manifest = config_from_dict(data["config"]), Manifest.from_json(data["manifest"])
        known = {f.name for f in fields(cls)}  # a search started by an older version: its keys
        kept = {k: v for k, v in data.items() if k in known}
        return cls(**{**kept, "config": config, "manifest": manifest})


def _trial(
    config: dict[str, Any], *, context: SearchContext, datasets: dict[str, Any] | None = None
) -> None:
    """One Tune trial: ``context.backbone`` trained with the sampled ``config`` (Tune's name for
    the parameters) applied, in this process or as a Ray Train run (``in_process``); on the
    search's shared passes when given."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    backbone = context.backbone
    cfg = apply_params(context.config.for_backbone(backbone), config, context.epochs)
    trial_id = ray.tune.get_context().get_trial_id()
    here = in_process(cfg)
    train_backbone(
        cfg,
        backbone,
        context.shards_uri,
        context.manifest,
        # stable across a restore: an interrupted trial's Train run resumes from its checkpoint
        name=f"{backbone}-{trial_id}",
        storage_path=join(context.path, "runs"),
        tensorboard_uri=join(join(context.path, TRIAL_TENSORBOARD), trial_id),
        callbacks=None if here else [TuneReportCallback()],
        datasets=datasets,
        in_trial=here,
    )


def _trainable(context: SearchContext, echo=print):
    """The trial function with its resources; with ``train.shared_passes`` the trials' passes
    are rendered here, once for the whole search (every trial reads the same augmented
    passes: one rendering instead of one per trial, and trials compared on the same data)."""
    from ray import tune

    cfg = context.config
    datasets = None
    if cfg.train.shared_passes:
        datasets = shared_datasets(
            cfg,
            context.shards_uri,
            context.manifest,
            context.epochs,
            echo=echo,
            prefix="tune",
        )
    fn = tune.with_parameters(_trial, context=context, datasets=datasets)
    return tune.with_resources(fn, trial_resources(cfg.for_backbone(context.backbone)))


def _tune_config(cfg: Config, concurrency: int):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    t = cfg.tune
    if t.search == "tpe":
        # Optuna's default waits 10 random trials before TPE starts; a dozen-trial search
        # would be almost all random, so TPE starts after a quarter of the budget
        sampler = optuna.samplers.TPESampler(
            seed=t.seed, n_startup_trials=max(2, t.num_samples // 4)
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=t.seed)
    scheduler = None
    if t.early_stopping:
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=trial_epochs(cfg),
            grace_period=min(t.grace_period, trial_epochs(cfg)),
            reduction_factor=t.reduction_factor,
        )
    return tune.TuneConfig(
        metric=METRIC,
        mode="max",
        search_alg=OptunaSearch(sampler=sampler),
        scheduler=scheduler,
        num_samples=t.num_samples,
        max_concurrent_trials=concurrency,
    )


# --- running and resuming ---------------------------------------------------------------------


def _progress_callback():
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial epoch and per trial end, instead of Tune's 30-second table."""

        def on_trial_start(self, iteration, trials, trial, **info):
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.config.items())
            print(f"[tune] trial {trial.trial_id} started: {params}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            print(
                f"[tune] trial {trial.trial_id} epoch {result.get('epoch')}: val macro-F1 "
                f"{result.get('val_macro_f1', float('nan')):.3f} (best "
                f"{result.get(METRIC, float('nan')):.3f})",
                flush=True,
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            epochs = (trial.last_result or {}).get("epoch", 0)
            print(f"[tune] trial {trial.trial_id} ended after {epochs} epoch(s)", flush=True)

    return Progress()


def search(
    cfg: Config, backbone: str, shards_uri: str, manifest: Manifest, echo=print
) -> SearchResult:
    """Run (or, when this exact search was started before, restore) one search on
    ``backbone`` and write its outputs."""
    from ray import tune

    storage = absolute(cfg.layout.tune)
    name = experiment_name(cfg, backbone, shards_uri)
    path = join(storage, name)
    found = finished_search(cfg, backbone, path)
    if found:
        echo(f"[tune] {backbone}: finished before ({path}); kept")
        return found
    check_trial_resources(cfg)
    steps_per_epoch(cfg, manifest)
    if exists(join(path, CONTEXT)) and tune.Tuner.can_restore(path):
        echo(f"[tune] {backbone}: found {path}; resuming it (finished trials are kept)")
        return resume(path, echo=echo)
    concurrency = concurrent_trials(cfg)
    context = SearchContext(
        config=cfg,
        backbone=backbone,
        shards_uri=absolute(shards_uri),
        manifest=manifest,
        epochs=trial_epochs(cfg),
        concurrency=concurrency,
        path=path,
    )
    make_dir(path)
    write_json(join(path, CONTEXT), context.to_dict())
    t = cfg.tune
    echo(
        f"[tune] {backbone}: {t.num_samples} trials x <= {trial_epochs(cfg)} epochs, "
        f"{t.search}{' + ASHA' if t.early_stopping else ''}, {concurrency} at a time, "
        f"over {', '.join(t.space)}"
    )
    echo(f"[tune] experiment: {path}  (tensorboard --logdir {path})")
    trial_cfg = cfg.for_backbone(backbone)
    tuner = tune.Tuner(
        _trainable(context, echo),
        param_space=search_space(t.space),
        tune_config=_tune_config(cfg, concurrency),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0,
            # a trial in its own process is retried by Tune from its last checkpoint, as Ray
            # Train restarts a worker group (train.max_failures)
            failure_config=tune.FailureConfig(
                max_failures=cfg.train.max_failures if in_process(trial_cfg) else 0
            ),
            callbacks=[
                _progress_callback(),
                *tracking.tune_callbacks(cfg, backbone),
            ],
        ),
    )
    return _finish(tuner, context, echo)


def finished_search(cfg: Config, backbone: str, path: str) -> SearchResult | None:
    """The search at ``path`` when every trial of it ended before (``search_result.json``),
    read from its files; else None."""
    import pyarrow.parquet as pq

    if not exists(join(path, RESULT)):
        return None
    found = read_json(join(path, RESULT))
    fs, local = resolve(join(path, TRIALS_PARQUET))
    rows = pq.read_table(local, filesystem=fs).to_pylist()
    return SearchResult(
        backbone=backbone,
        path=path,
        trials=rows,
        best_params=found["best_params"],
        best_val_macro_f1=found["best_val_macro_f1"],
        best_config=best_config(cfg, backbone, found["best_params"]),
        complete=True,
    )


def search_paths(cfg: Config, shards_uri: str) -> dict[str, str]:
    """backbone -> its search's experiment folder, for the searches ``tune.scope`` asks for."""
    storage = absolute(cfg.layout.tune)
    return {b: join(storage, experiment_name(cfg, b, shards_uri)) for b in cfg.searched_backbones()}


def check_resumable(path: str) -> None:
    """Fail fast (before Ray starts) when ``path`` is not a search folder."""
    if not exists(join(path.rstrip("/"), CONTEXT)):
        raise FileNotFoundError(
            f"{path}: not a logo-train search ({CONTEXT} missing); pass the experiment folder "
            "that `logo-train tune` printed"
        )


def resume(path: str, echo=print) -> SearchResult:
    """Restore an interrupted search (Ctrl-C, killed driver) and run what is left of it."""
    from ray import tune

    path = path.rstrip("/")
    check_resumable(path)
    if not tune.Tuner.can_restore(path):
        raise FileNotFoundError(f"{path}: Ray Tune finds no experiment state to restore")
    context = SearchContext.from_dict(read_json(join(path, CONTEXT)))
    tuner = tune.Tuner.restore(path, _trainable(context, echo), resume_unfinished=True)
    return _finish(tuner, context, echo)


def _finish(tuner, context: SearchContext, echo) -> SearchResult:
    start = time.perf_counter()
    grid = tuner.fit()
    cfg = context.config
    rows = trial_rows(grid, list(cfg.tune.space), context.epochs)
    complete = grid.num_terminated + grid.num_errors >= cfg.tune.num_samples
    result = summarise(cfg, context.backbone, context.path, rows, complete)
    echo(f"[tune] {result.line()}  ({time.perf_counter() - start:.0f} s)")
    if not complete:
        echo(f"[tune] interrupted; resume with: logo-train tune --resume {context.path}")
    for row in rows:
        if row["status"] == "ERROR":
            echo(f"[tune] trial {row['trial_id']} FAILED: {row['error']}")
    return result


def trial_rows(grid, params: list[str], max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial of a Tune ``ResultGrid``."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        epochs = int(metrics.get("epoch", 0))
        error = result.error
        row = {"trial_id": metrics.get("trial_id") or result.path.rsplit("/", 1)[-1]}
        row.update({p: result.config.get(p) for p in params})
        row.update(
            {
                METRIC: float(metrics.get(METRIC, float("nan"))),
                "epochs": epochs,
                "stopped_early": error is None and 0 < epochs < max_epochs,
                "status": "ERROR" if error else ("TERMINATED" if epochs else "PENDING"),
                "seconds": float(metrics.get("time_total_s", 0.0)),
                "error": f"{type(error).__name__}: {error}".splitlines()[0] if error else "",
            }
        )
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


# --- outputs ----------------------------------------------------------------------------------


def summarise(
    cfg: Config, backbone: str, path: str, rows: list[dict[str, Any]], complete: bool = True
) -> SearchResult:
    """Write trials.parquet / trials.md / best_config.yaml / search.png for ``rows``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    params = list(cfg.tune.space)
    scored = [r for r in rows if not math.isnan(r[METRIC])]
    if not scored:
        errors = "; ".join(r["error"] for r in rows if r["error"]) or "no trial reported"
        raise RuntimeError(f"search on {backbone} produced no result: {errors}")
    best = max(scored, key=lambda r: r[METRIC])
    best_params = {p: best[p] for p in params}
    best_cfg = best_config(cfg, backbone, best_params)

    fs, local = resolve(path)
    with fs.open_output_stream(f"{local}/{TRIALS_PARQUET}") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    write_bytes(join(path, TRIALS_MD), trials_markdown(rows, params, best).encode())
    header = (
        f"# Best of the search on {backbone} ({path}): val macro-F1 "
        f"{best[METRIC]:.4f} in trial {best['trial_id']}.\n"
        "# logo-train train --config <this file>   (tune.enabled is off: already tuned)\n"
    )
    write_bytes(join(path, BEST_CONFIG), (header + dump_config(best_cfg)).encode())
    write_bytes(join(path, PLOT), search_plot(rows, cfg.tune.space, backbone))
    if complete:
        write_json(
            join(path, RESULT),
            {"backbone": backbone, "best_params": best_params, "best_val_macro_f1": best[METRIC]},
        )
    return SearchResult(
        backbone=backbone,
        path=path,
        trials=rows,
        best_params=best_params,
        best_val_macro_f1=best[METRIC],
        best_config=best_cfg,
        complete=complete,
    )


def best_config(cfg: Config, backbone: str, params: dict[str, Any]) -> Config:
    """What to train with: ``cfg`` + ``params`` at full length; a per-backbone search's config
    trains only its backbone."""
    tuned = apply_params(cfg, params)
    tune_cfg = dataclasses.replace(tuned.tune, enabled=False, proxy_backbone="")
    model = tuned.model
    if cfg.tune.scope == "per_backbone":
        model = dataclasses.replace(
            model,
            backbones=[backbone],
            pretrained={k: v for k, v in model.pretrained.items() if k == backbone},
        )
    return dataclasses.replace(tuned, tune=tune_cfg, model=model)


def trials_markdown(rows: list[dict[str, Any]], params: list[str], best: dict[str, Any]) -> str:
    head = ["trial", *params, "best val macro-F1", "epochs run", "stopped early", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: -r[METRIC] if not math.isnan(r[METRIC]) else 1):
        mark = " (best)" if r is best else ""
        cells = [
            r["trial_id"] + mark,
            *[_fmt(r[p]) for p in params],
            f"{r[METRIC]:.4f}",
            str(r["epochs"]),
            "yes" if r["stopped_early"] else "no",
            r["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(int(r["epochs"]) for r in rows)
    return "\n".join(lines) + f"\n\nTrial-epochs spent: {total}.\n"


# --- every backbone ---------------------------------------------------------------------------


def tune_all(
    cfg: Config, shards_uri: str, manifest: Manifest, echo=print
) -> dict[str, SearchResult]:
    """The searches ``cfg.tune.scope`` asks for: one on the proxy, or one per backbone."""
    results = {}
    for backbone in search_paths(cfg, shards_uri):
        results[backbone] = search(cfg, backbone, shards_uri, manifest, echo=echo)
        if not results[backbone].complete:
            break  # interrupted: the caller stops here too
    return results


def tuned_configs(cfg: Config, searches: dict[str, SearchResult]) -> dict[str, Config]:
    """backbone -> the config to train it with, from ``tune_all``'s searches."""
    if cfg.tune.scope == "shared":
        (result,) = searches.values()
        best = {b: result.best_params for b in cfg.model.backbones}
    else:
        best = {b: searches[b].best_params for b in cfg.model.backbones}
    # the profile's recipe per backbone first, the tuned parameters on top
    return {b: apply_params(cfg.for_backbone(b), best[b]) for b in cfg.model.backbones}


def searches_to_run(cfg: Config, shards_uri: str) -> bool:
    """Whether a search of ``tune.scope`` has not finished before (the stage will run trials)."""
    return not all(finished_search(cfg, b, p) for b, p in search_paths(cfg, shards_uri).items())


def tune_stage(cfg: Config, shards_uri: str, manifest: Manifest) -> dict[str, SearchResult]:
    """The ``tune`` stage: Ray started (or joined), the searches of ``tune.scope``, and where
    each one's trials table and best config are. Searches that finished before are kept
    without starting Ray."""
    if searches_to_run(cfg, shards_uri):
        init_ray()
    searches = tune_all(cfg, shards_uri, manifest)
    for result in searches.values():
        print(f"[tune] trials: {join(result.path, 'trials.md')}")
        print(f"[tune] best config: {join(result.path, 'best_config.yaml')}")
    return searches
