"""Ray Train on the driver: every backbone of a run, one worker group per input size.

``train_stage`` (the pipeline's train stage) groups the backbones by data pipeline and trains
each group in one Ray Train run (``train_backbones``); what the workers run is
``logo_train.worker``. ``train/summary.json`` lists every trained backbone, its best checkpoint
and where its time went.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
import ray.train
import ray.train.torch

from logo_train import checkpoint as ckpt
from logo_train import tracking, wise
from logo_train.backbones import NONE, weights_source
from logo_train.config import Config
from logo_train.data.augment import transform_specs
from logo_train.data.datasets import small_eval_split, train_val_datasets
from logo_train.data.shards import Manifest
from logo_train.models import build_model, count_parameters
from logo_train.progress import Progress, ProgressWatcher, backbone_progress
from logo_train.raysetup import init_ray
from logo_train.storage import absolute, exists, join, list_names, read_json, remove, write_json
from logo_train.worker import BEST, RESULT_JSON, Job, train_in_trial, train_loop_per_worker

log = logging.getLogger(__name__)

SELECT_METRIC = "val_macro_f1"


# --- driver side ------------------------------------------------------------------------------


@dataclass
class BackboneResult:
    backbone: str
    params: int
    best_val_macro_f1: float
    best_epoch: int
    epochs: int
    train_images_per_s: float
    data_wait_fraction: float
    seconds: float
    checkpoint: str
    """Folder of the checkpoint with the best val macro-F1."""
    run_path: str
    """``<run>/<backbone>``: ``history.json``, ``result.json``, ``best/``."""
    resumed: bool
    time: dict[str, float] = field(default_factory=dict)
    """Where the time went: group start, set-up, first-batch wait, validation, checkpoints,
    steady-state images/s and the fixed cost outside steady-state training."""
    round: int = 1
    """1 = trained on the given labels; 2, 3, ...: a cleaning round's retraining."""
    cleaning: dict[str, Any] = field(default_factory=dict)
    """A cleaning round's counts (``clean.write_cleaning``'s summary); empty in round 1."""

    @property
    def label(self) -> str:
        """How tables name this model: the backbone, with the cleaning round after round 1."""
        return ckpt.run_label(self.backbone, self.round)

    def line(self) -> str:
        return (
            f"{self.label:<22} val macro-F1 {self.best_val_macro_f1:.3f} "
            f"(best epoch {self.best_epoch}/{self.epochs})  "
            f"{self.train_images_per_s:6.0f} img/s  data wait {100 * self.data_wait_fraction:4.1f}%"
            f"  {self.seconds:5.0f} s  checkpoint: {self.checkpoint}"
        )


def check_resources(cfg: Config) -> None:
    """Fail before any work when the workers cannot fit (or would starve Ray Data)."""
    tc = cfg.train
    if tc.autoscale:
        return
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    need_cpu = tc.num_workers * tc.cpus_per_worker
    if need_cpu > cpus:
        raise ValueError(
            f"config field 'train.num_workers' = {tc.num_workers}: {tc.num_workers} workers x "
            f"{tc.cpus_per_worker} CPU = {need_cpu:g} CPUs but the cluster has {cpus:g} "
            "(fewer workers, fractional train.cpus_per_worker, or train.autoscale: true)"
        )
    if need_cpu >= cpus and tc.gpus_per_worker == 0:
        raise ValueError(
            f"config field 'train.cpus_per_worker' = {tc.cpus_per_worker}: the workers would "
            f"take all {cpus:g} CPUs and leave none to Ray Data, which hangs the run; use a "
            "fractional value"
        )
    if tc.num_workers * tc.gpus_per_worker > gpus:
        raise ValueError(
            f"config field 'train.gpus_per_worker' = {tc.gpus_per_worker}: needs "
            f"{tc.num_workers * tc.gpus_per_worker:g} GPUs, the cluster has {gpus:g} "
            "(set train.autoscale: true on an autoscaling GPU cluster)"
        )


def with_min_steps(cfg: Config, backbone: str, manifest: Manifest, echo=None) -> Config:
    """``cfg`` with ``train.epochs`` raised so the run takes at least ``train.min_steps``
    optimisation steps: a fine-tuning recipe sized for the embedded data's 5,555 images would
    take 15 steps on a user's 400 photos."""
    tc = cfg.train
    steps = steps_per_epoch(cfg, manifest)
    if tc.epochs * steps >= tc.min_steps:
        return cfg
    epochs = math.ceil(tc.min_steps / steps)
    if echo:
        echo(
            f"[train] {backbone}: {steps} steps an epoch on {manifest.split_rows('train')} "
            f"training images: {epochs} epochs instead of {tc.epochs} (train.min_steps "
            f"{tc.min_steps})"
        )
    return cfg.with_train(epochs=epochs)


def steps_per_epoch(cfg: Config, manifest: Manifest) -> int:
    per_worker_rows = manifest.split_rows("train") // cfg.train.num_workers
    steps = per_worker_rows // (cfg.train.batch_size // cfg.train.num_workers)
    if steps < 1:
        raise ValueError(
            f"config field 'train.batch_size' = {cfg.train.batch_size}: larger than the "
            f"{manifest.split_rows('train')} training rows allow"
        )
    return steps


def _check_same_scaling(configs: dict[str, Config]) -> Config:
    """One worker group trains every backbone: their scaling and data fields must agree."""
    first_name, first = next(iter(configs.items()))
    fields = ("num_workers", "cpus_per_worker", "gpus_per_worker", "autoscale", "max_failures")
    for name, cfg in configs.items():
        for f in fields:
            if getattr(cfg.train, f) != getattr(first.train, f):
                raise ValueError(
                    f"config field 'train.{f}' differs between {first_name} and {name}: one "
                    "worker group trains every backbone"
                )
        if data_key(cfg) != data_key(first):
            raise ValueError(
                f"config fields 'model.image_size' / 'model.resize' / 'augment' differ between "
                f"{first_name} and {name}: the backbones of one worker group share the data "
                "pipeline (train_stage trains each input size in a group of its own)"
            )
    return first


def data_key(cfg: Config) -> tuple:
    """What the backbones of one worker group must share: their data pipeline's input."""
    return (cfg.model.image_size, cfg.model.resize, *asdict(cfg.augment).values())


def size_groups(configs: dict[str, Config]) -> list[dict[str, Config]]:
    """The backbones by data pipeline (``data_key``: input size, resize, augmentation), in the
    order they first appear: one worker group trains each."""
    groups: dict[tuple, dict[str, Config]] = {}
    for backbone, cfg in configs.items():
        groups.setdefault(data_key(cfg), {})[backbone] = cfg
    return list(groups.values())


def train_backbones(
    configs: dict[str, Config],
    shards_uri: str,
    manifest: Manifest,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    tensorboard_uri: str | None = None,
    callbacks: list | None = None,
    echo=None,
    datasets: dict[str, Any] | None = None,
    track: dict[str, str] | None = None,
    in_trial: bool = False,
) -> tuple[list[BackboneResult], dict[str, str]]:
    """Train every backbone of ``configs`` (backbone -> its config), in order, in **one** Ray
    Train run: one worker group, one Ray Data pipeline, so Ray's start-up is paid once.

    The run is ``<run dir>/train/<name>`` (default ``run-<time>``); each backbone's best
    checkpoint is ``<run>/<backbone>/best``. A Tune trial passes its own ``name`` (stable across
    a restore, so the run resumes from its checkpoint), ``storage_path``, ``tensorboard_uri``
    and ``callbacks`` (``TuneReportCallback``). ``echo`` gets one line per epoch.
    ``datasets``: passes rendered before (``shared_datasets``), read by every backbone from the
    first; the search renders its trials' passes once this way. ``track``: the tags of the
    backbones' MLflow runs (``stage``, a cleaning round's ``round``), None for no run of their
    own (a Tune trial: Tune's callback tracks it). ``in_trial``: a one-worker Tune trial runs
    the loop in its own process instead of a Ray Train run (``worker.train_in_trial``).

    Returns the trained backbones and the failed or untrained ones (backbone -> error): a
    backbone that raises is recorded and retried from the last checkpoint up to
    ``train.max_failures`` times; the backbones trained before it are kept."""
    configs = {b: with_min_steps(c, b, manifest, echo) for b, c in configs.items()}
    cfg = _check_same_scaling(configs)
    shared = datasets is not None or _shares_passes(configs)
    if datasets is None:
        datasets = _group_datasets(configs, shards_uri, manifest, shared, echo)
    name = name or f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    # Ray Train takes a URI or an absolute path (a relative one is not a valid URI)
    storage_path = absolute(storage_path or cfg.layout.train)
    jobs = [
        Job(
            backbone=backbone,
            config=bcfg,
            steps_per_epoch=steps_per_epoch(bcfg, manifest),
            output_uri=join(join(storage_path, name), backbone),
            tensorboard_uri=absolute(
                tensorboard_uri or cfg.layout.tensorboard_of(f"{name}/{backbone}")
            ),
        )
        for backbone, bcfg in configs.items()
    ]
    loop_config = _loop_config(cfg, jobs, manifest, shared)
    watcher = ProgressWatcher(jobs, echo) if echo else None
    try:
        if in_trial:  # an error is the trial's: Tune retries it from its checkpoint
            train_in_trial(loop_config, datasets, cfg.train.use_gpu)
            error = None
        else:
            error = _trainer(cfg, loop_config, datasets, name, storage_path, callbacks).fit().error
            prune_unregistered(join(storage_path, name))
    finally:
        if watcher:
            watcher.stop()
    done = [j for j in jobs if exists(join(j.output_uri, RESULT_JSON)) and j.error() is None]
    if error and not done:
        raise error
    failures = {j.backbone: j.error() or f"not trained: {error!r}" for j in jobs if j not in done}
    for j in done:
        averaged = wise.apply(j.config, j.backbone, j.output_uri, shards_uri, manifest)
        if track is not None:
            log_tracked(j.config, j.backbone, j.output_uri, track)
        if averaged and echo:
            echo(
                f"[train] {j.backbone}: WiSE-FT, {averaged['alpha']:g} x fine-tuned + "
                f"{1 - averaged['alpha']:g} x starting weights: validation macro-F1 "
                f"{averaged['val_macro_f1_before']:.3f} -> {averaged['val_macro_f1']:.3f}, "
                + ("kept" if averaged["kept"] else "too low: the trained weights stay")
            )
    return [_backbone_result(j, manifest) for j in done], failures


def log_tracked(cfg: Config, backbone: str, output_uri: str, tags: dict[str, str]) -> None:
    """A finished backbone's MLflow run (``tracking.log_backbone``; once: a backbone kept
    from an earlier driver gets its run if that driver died before logging it)."""
    where = tracking.settings(cfg)
    if where:
        model = ckpt.run_label(backbone, int(tags.get("round", "1")))
        with _TRACKING:  # lanes (train.lanes) finish side by side; one SQLite store
            tracking.log_backbone(where, cfg, model, {**tags, "backbone": backbone}, output_uri)


_TRACKING = threading.Lock()


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
"""Ray Train's record of the checkpoints it registered, in the run folder (Ray 2.60)."""


def prune_unregistered(run_uri: str) -> list[str]:
    """Remove the checkpoint folders of the Ray Train run ``run_uri`` that Ray never registered:
    a driver killed between a worker's upload and the controller's registration leaves one,
    which no restore reads. Nothing is removed when Ray's snapshot is absent or unreadable."""
    try:
        snapshot = read_json(join(run_uri, RAY_SNAPSHOT))
        kept = {r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    stale = [n for n in list_names(run_uri) if n.startswith("checkpoint_") and n != RAY_SNAPSHOT]
    stale = [n for n in stale if n not in kept]
    for name in stale:
        remove(join(run_uri, name))
    if stale:
        log.info("%s: removed %d checkpoint(s) Ray never registered", run_uri, len(stale))
    return stale


def _loop_config(cfg: Config, jobs: list[Job], manifest: Manifest, shared: bool) -> dict:
    """``train_loop_per_worker``'s argument (Ray Train takes a dict): the jobs, as they are,
    and what every backbone of the group shares."""
    return {
        "jobs": jobs,
        "class_names": list(manifest.classes),
        "train_counts": [manifest.counts["train"][c] for c in manifest.classes],
        "torch_threads": cfg.train.torch_threads,
        "cache_val": small_eval_split(manifest, "val", cfg.model.image_size),
        "eval_batch_size": cfg.train.eval_batch_size,
        "fit_started": time.time(),
        "shared_passes": shared,
    }


def _shares_passes(configs: dict[str, Config]) -> bool:
    """Whether a worker group's backbones read passes rendered once (``train.shared_passes``,
    more than one backbone) rather than streaming their own."""
    return next(iter(configs.values())).train.shared_passes and len(configs) > 1


def _group_datasets(configs, shards_uri, manifest, shared: bool, echo) -> dict[str, Any]:
    """One pass of the train split per epoch of every backbone, streamed as one (one backbone:
    its rendering overlaps its training); or, ``shared``, max(epochs) passes rendered now (or
    ahead, ``render_ahead``) and read by every backbone."""
    cfg = next(iter(configs.values()))
    epochs = [c.train.epochs for c in configs.values()]
    if shared:
        return shared_datasets(cfg, shards_uri, manifest, _shared_passes_count(configs), echo)
    return _datasets(cfg, shards_uri, manifest, sum(epochs))


def _shared_passes_count(configs: dict[str, Config]) -> int:
    """How many passes a group that shares them renders: its longest backbone's epochs."""
    return max(c.train.epochs for c in configs.values())


def _trainer(cfg: Config, loop_config, datasets, name: str, storage_path: str, callbacks):
    """The ``TorchTrainer`` of one worker group: ``train.num_workers`` workers of
    ``train.cpus_per_worker`` CPUs (and GPUs), the run's checkpoints and failure policy."""
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            # the latest checkpoints, for resume; each backbone's best is its own best/ folder
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tc.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def _specs(cfg: Config) -> tuple:
    """The (train, eval) transforms of ``cfg``'s passes: uint8 out of Ray Data, normalised per
    backbone on the worker (its own mean/std), so no model is built for them."""
    return transform_specs(
        cfg.model.image_size, cfg.augment, (0.0,) * 3, (1.0,) * 3, cfg.model.resize
    )


def _datasets(cfg: Config, shards_uri: str, manifest: Manifest, passes: int) -> dict[str, Any]:
    """Train (``passes`` augmented passes, lazy) and val datasets for ``cfg``'s backbones."""
    specs = _specs(cfg)
    return train_val_datasets(shards_uri, manifest, *specs, passes=passes, seed=cfg.train.seed)


_AHEAD: dict[tuple, tuple[str, int, dict[str, Any]]] = {}
"""Passes rendered ahead in this driver (``render_ahead``), by (shards, transforms, seed):
(Ray job, passes, datasets)."""


def _rendering(cfg: Config, shards_uri: str) -> tuple:
    return (absolute(shards_uri), _specs(cfg), cfg.train.seed)


def shared_datasets(
    cfg: Config, shards_uri: str, manifest: Manifest, passes: int, echo=None, prefix="train"
) -> dict[str, Any]:
    """``train.shared_passes``: ``passes`` augmented passes of the train split rendered now,
    with the whole machine, into Ray's object store (``materialize``); every backbone of a
    run, or every trial of a search, then reads them from the first without rendering. Passes
    rendered ahead (``render_ahead``) with the same transforms and seed, at least ``passes``
    of them, are read instead: the first ``passes`` of a longer rendering are the same
    images (``pass_items``), and a reader takes only its epochs' steps."""
    job = ray.get_runtime_context().get_job_id()
    ahead = _AHEAD.get(_rendering(cfg, shards_uri))
    if ahead and ahead[0] == job and ahead[1] >= passes:
        if echo:
            echo(f"[{prefix}] reading the first {passes} of the {ahead[1]} passes rendered ahead")
        return ahead[2]
    check_object_store(cfg, manifest, passes)
    start = time.perf_counter()
    datasets = _datasets(cfg, shards_uri, manifest, passes)
    datasets["train"] = datasets["train"].materialize()
    if echo:
        rows = passes * manifest.split_rows("train")
        echo(
            f"[{prefix}] {passes} augmented passes of the train split rendered once: "
            f"{rows} images, "
            f"{datasets['train'].size_bytes() / 2**20:.0f} MiB in Ray's object store, "
            f"{time.perf_counter() - start:.0f} s"
        )
    return datasets


def render_ahead(cfg: Config, shards_uri: str, manifest: Manifest, echo=print) -> None:
    """Before a search that the train stage follows (the pipeline's tune stage): render the
    passes of the train stage's first worker group that reads shared passes, so that the
    search's trials, when they have its transforms (the proxy at that group's input size),
    and then the group read one rendering: Ray Data starts once instead of twice (~10 s on
    2 cores). Nothing is rendered when the search's transforms (``cfg``'s, which its trials
    render with) are not that group's. The train stage drops them when its groups are done
    (``train_stage``)."""
    for lanes in stage_groups(cfg):
        configs = {b: with_min_steps(c, b, manifest) for _, lane in lanes for b, c in lane.items()}
        if _shares_passes(configs):
            first = next(iter(configs.values()))
            key = _rendering(first, shards_uri)
            if key != _rendering(cfg, shards_uri):
                return
            init_ray()
            passes = _shared_passes_count(configs)
            datasets = shared_datasets(first, shards_uri, manifest, passes, echo, "tune")
            _AHEAD[key] = (ray.get_runtime_context().get_job_id(), passes, datasets)
            return


OBJECT_STORE_SHARE = 0.7
"""Most of Ray's object store the shared passes may fill (the rest: Ray Data's own blocks)."""


def shared_passes_bytes(cfg: Config, manifest: Manifest, passes: int) -> int:
    """What ``passes`` rendered passes take in the object store: uint8 CHW images + a label."""
    size = cfg.model.image_size
    return passes * manifest.split_rows("train") * (3 * size * size + 8)


def check_object_store(cfg: Config, manifest: Manifest, passes: int, capacity=None) -> None:
    """Refuse, before any rendering, shared passes that would not fit in Ray's object store
    (``capacity`` bytes; default the cluster's): they would spill to disk or fail mid-run.
    Skipped with ``train.autoscale``, where nodes (and their object stores) come with the work."""
    if cfg.train.autoscale:
        return
    if capacity is None:
        capacity = ray.cluster_resources().get("object_store_memory", 0.0)
    need = shared_passes_bytes(cfg, manifest, passes)
    if capacity and need > OBJECT_STORE_SHARE * capacity:
        raise ValueError(
            f"config field 'train.shared_passes' = true: {passes} augmented passes of "
            f"{manifest.split_rows('train')} training images at {cfg.model.image_size} px take "
            f"{need / 2**30:.2f} GiB, more than {OBJECT_STORE_SHARE:.0%} of Ray's object store "
            f"({capacity / 2**30:.2f} GiB): set train.shared_passes: false (each backbone then "
            "streams its passes), train fewer epochs, or start Ray with a larger object store "
            "(ray start --object-store-memory BYTES)"
        )


def _backbone_result(job: Job, manifest: Manifest) -> BackboneResult:
    return backbone_result(job.backbone, job.output_uri, job.config.model.image_size, manifest)


def backbone_result(
    backbone: str, output_uri: str, image_size: int, manifest: Manifest
) -> BackboneResult:
    """A trained backbone, from its ``result.json`` in ``output_uri`` (``<run>/<backbone>``)."""
    model = build_model(backbone, len(manifest.classes), image_size)
    params = count_parameters(model)
    summary = read_json(join(output_uri, RESULT_JSON))
    return BackboneResult(
        backbone=backbone,
        params=params,
        best_val_macro_f1=summary["best_val_macro_f1"],
        best_epoch=summary["best_epoch"],
        epochs=summary["epochs"],
        train_images_per_s=summary["train_images_per_s"],
        data_wait_fraction=summary["data_wait_fraction"],
        seconds=summary["seconds"],
        checkpoint=join(output_uri, BEST),
        run_path=output_uri,
        resumed=summary["resumed"],
        time=summary["time"],
    )


def train_backbone(
    cfg: Config,
    backbone: str,
    shards_uri: str,
    manifest: Manifest,
    **kwargs,
) -> BackboneResult:
    """One backbone in its own Ray Train run (a Tune trial, a benchmark); ``train_backbones``
    takes the same keyword arguments."""
    results, failures = train_backbones({backbone: cfg}, shards_uri, manifest, **kwargs)
    if failures:
        raise RuntimeError(f"training {backbone} failed: {failures[backbone]}")
    return results[0]


def _weights_word(cfg: Config, backbone: str) -> str:
    """'' for random init, else where the starting weights come from (for the plan line)."""
    source = weights_source(cfg.model, backbone)
    return "" if source == NONE else f"from ImageNet ({source})"


def run_name(size: int, groups: int) -> str:
    """The train stage's Ray Train run of a size group: ``run`` (``run-<size>px`` with several
    groups). Stable, so the same command after a killed driver finds it: Ray restores a run
    from its ``RunConfig(name, storage_path)``, the worker loop skips the backbones the last
    checkpoint had finished and goes on with the interrupted one."""
    return f"run-{size}px" if groups > 1 else "run"


Lane = tuple[str, dict[str, Config]]
"""One Ray Train run of the train stage: its stable name and its backbones' configs."""


def lanes_of(name: str, group: dict[str, Config]) -> list[Lane]:
    """A size group's Ray Train runs (``train.lanes``): the backbones dealt in turn to ``lanes``
    runs ``<name>-lane<i>``, trained side by side, each worker with its share of the group's
    CPUs and torch threads; one run ``name`` with one lane or one backbone. The deal depends on
    the config alone, so a driver started again finds each backbone in the same run. On GPUs
    (``train.gpus_per_worker`` > 0) a group is one run: each worker has its device."""
    tc = next(iter(group.values())).train
    count = 1 if tc.use_gpu else min(tc.lanes, len(group))
    if count == 1:
        return [(name, group)]
    share = {
        "cpus_per_worker": tc.cpus_per_worker / count,
        "torch_threads": max(1, tc.torch_threads // count) if tc.torch_threads else 0,
    }
    backbones = list(group)
    return [
        (f"{name}-lane{i + 1}", {b: group[b].with_train(**share) for b in backbones[i::count]})
        for i in range(count)
    ]


def stage_groups(cfg: Config, per_backbone: dict[str, Config] | None = None) -> list[list[Lane]]:
    """The train stage's size groups (``size_groups``), each as its lanes (``lanes_of``):
    backbone -> config (``per_backbone``'s tuned one, else ``cfg.for_backbone``)."""
    configs = {b: (per_backbone or {}).get(b) or cfg.for_backbone(b) for b in cfg.model.backbones}
    groups = size_groups(configs)
    return [
        lanes_of(run_name(next(iter(g.values())).model.image_size, len(groups)), g) for g in groups
    ]


def stage_progress(cfg: Config) -> list[tuple[Progress, int]]:
    """Every backbone of the train stage: how far it got (from the files of its stable run)
    and its epochs (``train.epochs``)."""
    out = []
    for lanes in stage_groups(cfg):
        for name, group in lanes:
            run_uri = join(cfg.layout.train, name)
            out += [
                (backbone_progress(join(run_uri, b), b), c.train.epochs) for b, c in group.items()
            ]
    return out


def train_stage(
    cfg: Config,
    shards_uri: str,
    manifest: Manifest,
    per_backbone: dict[str, Config] | None = None,
    echo=print,
) -> list[BackboneResult]:
    """The ``train`` stage: Ray started (or joined); every backbone of ``cfg.model.backbones``
    trained, one worker group per input size (``size_groups``: the backbones of a group share
    one data pipeline, and Ray's start-up is paid once per group), or ``train.lanes`` groups
    side by side (``lanes_of``); ``train/summary.json`` (with where each backbone's time went).

    Each group is one Ray Train run with a stable name (``run_name``): run again after a killed
    driver, the backbones that finished are kept as they are and the rest resume from the run's
    last checkpoint. ``per_backbone`` maps a backbone to its own config (``tune.tuned_configs``,
    when the run searched); the others train with ``cfg.for_backbone`` (the profile's recipe
    per backbone)."""
    steps_per_epoch(cfg, manifest)
    groups = stage_groups(cfg, per_backbone)
    results, failures = [], {}
    for number, lanes in enumerate(groups, 1):
        which = f" {number} of {len(groups)}" if len(groups) > 1 else ""
        done, failed = _train_group(cfg, lanes, shards_uri, manifest, which, echo)
        failures.update(failed)
        results += [done[b] for b in cfg.model.backbones if b in done]  # the table's order
    _AHEAD.clear()  # passes rendered ahead are read by now
    for result in results:
        echo("[train] " + result.line())
    for backbone, error in failures.items():
        echo(f"[train] {backbone} FAILED: {error}")
    write_json(
        cfg.layout.train_summary,
        {"results": [asdict(r) for r in results], "failures": failures},
    )
    if failures:
        raise RuntimeError(f"{len(failures)} backbone(s) failed: {failures}")
    echo(f"training summary: {cfg.layout.train_summary}")
    echo(f"tensorboard --logdir {cfg.layout.tensorboard}")
    return results


def _train_group(
    cfg: Config, lanes: list[Lane], shards_uri: str, manifest: Manifest, which: str, echo
) -> tuple[dict[str, BackboneResult], dict[str, str]]:
    """One size group of the train stage: the backbones a run before had finished kept, the
    others trained, each lane in its Ray Train run (side by side with several lanes, reading
    one rendering of the shared passes). Returns backbone -> result, and the failures."""
    size = next(iter(lanes[0][1].values())).model.image_size
    done: dict[str, BackboneResult] = {}
    todo: list[Lane] = []
    for name, group in lanes:
        run_uri = join(absolute(cfg.layout.train), name)
        for b in group:
            if backbone_progress(join(run_uri, b), b).done:
                echo(f"[train] {b}: trained before ({join(run_uri, b)}); kept")
                done[b] = backbone_result(b, join(run_uri, b), size, manifest)
                log_tracked(group[b], b, join(run_uri, b), {"stage": "train"})
        rest = {b: c for b, c in group.items() if b not in done}
        if rest:
            todo.append((name, rest))
    if not todo:
        return done, {}
    init_ray()
    check_resources(cfg)
    datasets = None
    if len(todo) > 1:
        echo = _one_at_a_time(echo)
        # the lanes read one rendering of the passes when they share them
        configs = {b: with_min_steps(c, b, manifest) for _, g in todo for b, c in g.items()}
        if _shares_passes(configs):
            datasets = _group_datasets(configs, shards_uri, manifest, True, echo)

    def train_lane(number: int, lane: Lane) -> tuple[list[BackboneResult], dict[str, str]]:
        name, group = lane
        tc = next(iter(group.values())).train
        side = f", lane {number} of {len(todo)}" if len(todo) > 1 else ""
        echo(f"[train] worker group{which}{side} ({tc.num_workers} worker(s) x "
             f"{tc.cpus_per_worker:g} CPU, {size} px): " + _plan(group))  # fmt: skip
        try:
            return train_backbones(
                group, shards_uri, manifest, echo=echo, name=name, datasets=datasets,
                track={"stage": "train"},
            )  # fmt: skip
        except Exception as e:  # written to the summary, then raised
            log.exception("training failed")
            key = name if len(todo) > 1 else "run" + (f" ({size} px group)" if which else "")
            return [], {key: f"{type(e).__name__}: {e}"}

    if len(todo) == 1:
        outcomes = [train_lane(1, todo[0])]
    else:
        with ThreadPoolExecutor(len(todo), thread_name_prefix="lane") as pool:
            runs = [pool.submit(train_lane, i, lane) for i, lane in enumerate(todo, 1)]
            try:
                outcomes = [run.result() for run in runs]
            except KeyboardInterrupt:
                # Ray Train's Ctrl-C handler is the main thread's alone: the lanes end as
                # after a killed driver (the same command resumes them), not after training
                ray.shutdown()
                raise
    failures: dict[str, str] = {}
    for trained_now, failed in outcomes:
        done.update({r.backbone: r for r in trained_now})
        failures.update(failed)
    return done, failures


def trained(cfg: Config) -> list[BackboneResult] | None:
    """The train stage's results when it finished before (``train/summary.json`` without a
    failure, every backbone of the config in it, each ``result.json`` still there), else None."""
    uri = cfg.layout.train_summary
    if not exists(uri):
        return None
    summary = read_json(uri)
    rows = {r["backbone"]: r for r in summary["results"]}
    if summary["failures"] or set(rows) != set(cfg.model.backbones):
        return None
    if not all(backbone_progress(r["run_path"], b).done for b, r in rows.items()):
        return None
    return [BackboneResult(**rows[b]) for b in cfg.model.backbones]


def _one_at_a_time(echo):
    """``echo`` for lanes: one whole line at a time (``print`` writes a line and its end
    separately, so two threads' lines would run together)."""
    lock = threading.Lock()

    def said(line: str) -> None:
        with lock:
            echo(line)

    return said


def _plan(group: dict[str, Config]) -> str:
    """What a worker group trains: each backbone's epochs, peak lr and starting weights."""
    return ", ".join(
        f"{b} ({c.train.epochs} epochs, lr {c.train.lr:g}"
        + (f", {_weights_word(c, b)}" if _weights_word(c, b) else "")
        + ")"
        for b, c in group.items()
    )
