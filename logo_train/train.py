"""Ray Train: the per-worker training loop and the driver that trains every backbone.

``train_loop_per_worker`` is what each DDP worker runs (gloo on CPU, NCCL on GPU, via
``ray.train.torch.prepare_model``). Every epoch each rank reports the same metrics; rank 0
attaches a checkpoint. After a worker dies, Ray restarts the group (``FailureConfig``) and the
loop resumes from ``ray.train.get_checkpoint()`` with epoch, optimizer, scheduler, scaler and
history restored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from logo_train import checkpoint as ckpt
from logo_train import engine
from logo_train.config import Config, config_from_dict, config_to_dict
from logo_train.data.augment import normalise, transform_specs
from logo_train.data.pipeline import small_eval_split, train_val_datasets
from logo_train.data.shards import Manifest, exists, join, read_bytes, resolve, write_bytes
from logo_train.engine import build_training, classifier, evaluate, trust_head
from logo_train.models import build_model, count_parameters, normalisation, weights_source
from logo_train.weights import NONE

log = logging.getLogger(__name__)

SELECT_METRIC = "val_macro_f1"
BEST = "best"
"""A backbone's best checkpoint (by val macro-F1): ``<run>/<backbone>/best/``."""
RESULT_JSON = "result.json"


# --- worker side ------------------------------------------------------------------------------


class _TensorBoard:
    """Rank 0's event files, written locally and copied to ``uri`` after each epoch."""

    def __init__(self, uri: str):
        from tensorboardX import SummaryWriter

        self.uri = uri
        self.local = tempfile.mkdtemp(prefix="tb-")
        self.writer = SummaryWriter(self.local)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key.replace("_", "/", 1), value, step)
        self.writer.flush()
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as f:
                write_bytes(join(self.uri, name), f.read())


class _Prefetch:
    """Pull from an iterator in a background thread, so the next epoch's data pipeline starts
    (about 1-3 s of Ray Data start-up on a small machine) while this epoch is validated."""

    _END = object()

    def __init__(self, iterable, depth: int = 2):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False

        def pump() -> None:
            try:
                for item in iterable:
                    if self._closed:
                        break
                    self._queue.put(item)
            except BaseException as e:  # re-raised in the training thread
                self._error = e
            finally:
                self._queue.put(self._END)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop pulling: the rest of the stream is not needed (the next backbone starts its
        own over shared passes)."""
        import contextlib
        import queue

        self._closed = True
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # the pump may still be fetching
                self._queue.get(timeout=0.1)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            self._thread.join()
            if self._error is not None:
                raise self._error
            raise StopIteration
        return item


@dataclass
class Job:
    """One backbone of a worker group's run."""

    backbone: str
    config: dict[str, Any]
    """The resolved config this backbone trains with (a per-backbone search's best)."""
    steps_per_epoch: int
    output_uri: str
    """``<run>/<backbone>``: ``best/`` (the best checkpoint), ``history.json``, ``result.json``."""
    tensorboard_uri: str


def _save_checkpoint(directory: str, t, info: ckpt.ModelInfo, **state) -> None:
    ckpt.save(
        directory,
        info=info,
        model=classifier(t.model),
        trust_head=trust_head(t.model),
        optimizer=t.optimizer,
        scheduler=t.scheduler,
        scaler=t.scaler,
        **state,
    )


def _copy_folder(directory: str, uri: str) -> None:
    """A local folder's files to ``uri`` (any pyarrow filesystem)."""
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            write_bytes(join(uri, name), f.read())


def _restore(t, state: dict[str, Any]) -> None:
    classifier(t.model).load_state_dict(state["model"])
    if trust_head(t.model) is not None:
        trust_head(t.model).load_state_dict(state["trust_head"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.scaler.load_state_dict(state["scaler"])


def _write_json(uri: str, data: Any) -> None:
    write_bytes(uri, json.dumps(data, indent=2).encode())


def _run_batches(shard, batch_size: int, tc, device) -> _Prefetch:
    """The run's training batches: one stream over every pass of every backbone (the train
    dataset is the split repeated, ``data.pipeline.train_val_datasets``), pulled ahead in a
    background thread. One stream instead of one per epoch: starting a Ray Data execution
    costs ~3 s on 2 cores, and an epoch of a small backbone there takes ~10 s."""
    return _Prefetch(
        shard.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            local_shuffle_buffer_size=tc.shuffle_buffer or None,
            local_shuffle_seed=tc.seed if tc.shuffle_buffer else None,
            device=device,
        )
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train every job (backbone) of ``loop_config["jobs"]`` in turn in this worker group.

    One group for all backbones pays Ray's start-up (worker processes, process group, Ray
    Data's executor) once per run instead of once per backbone. Every epoch, rank 0 writes the
    backbone's ``history.json``, its best checkpoint (``best/``) when validation improved, and
    reports a Ray checkpoint of the whole run's state (for resume after a worker failure)."""
    loop_start = time.time()
    jobs = [Job(**j) for j in loop_config["jobs"]]
    class_names: list[str] = loop_config["class_names"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if loop_config.get("torch_threads"):
        torch.set_num_threads(loop_config["torch_threads"])

    resume_state, finished = None, []
    resume_from = ray.train.get_checkpoint()
    if resume_from:
        with resume_from.as_directory() as directory:
            resume_state = ckpt.load_state(directory)
        finished = list(resume_state["finished"])
    todo = [j for j in jobs if j.backbone not in finished]
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    if loop_config["cache_val"]:  # a small split: fetched once, not once per epoch
        val_shard = list(
            val_shard.iter_torch_batches(batch_size=loop_config["eval_batch_size"], device=device)
        )
    batches = None
    group_start = loop_start - loop_config["fit_started"]
    for index, job in enumerate(todo):
        resume = resume_state if resume_state and resume_state["backbone"] == job.backbone else None
        if loop_config["shared_passes"] and batches is not None:
            batches.close()  # every backbone reads the shared passes from the first
            batches = None
        try:
            batches = _train_job(
                job,
                loop_config,
                resume,
                finished,
                shards=(train_shard, val_shard),
                batches=batches,
                group_start_seconds=group_start if index == 0 else 0.0,
                rank_world_device=(rank, world, device),
                class_names=class_names,
            )
        except Exception as e:
            # on record, then Ray restarts the group from the last checkpoint (FailureConfig):
            # a worker that died mid-epoch costs a retry; an error that repeats stops the run
            # after train.max_failures, keeping the backbones trained before it
            if rank == 0:
                _write_json(
                    join(job.output_uri, RESULT_JSON),
                    {"backbone": job.backbone, "error": f"{type(e).__name__}: {e}"},
                )
            raise
        finished.append(job.backbone)


def _error(job: Job) -> str | None:
    """The error a backbone's training last raised in this run, if it did not finish since."""
    uri = join(job.output_uri, RESULT_JSON)
    return json.loads(read_bytes(uri)).get("error") if exists(uri) else None


def _build(job: Job, train_counts: list[int], class_names: list[str], rank: int, device):
    """The backbone's training state (DDP-wrapped), its checkpoint info and normalisation."""
    cfg = config_from_dict(job.config)
    torch.manual_seed(cfg.train.seed + rank)
    t = build_training(
        cfg,
        job.backbone,
        len(class_names),
        train_counts,
        job.steps_per_epoch,
        device,
        wrap=ray.train.torch.prepare_model,
    )
    mean, std = normalisation(classifier(t.model))
    info = ckpt.ModelInfo(
        backbone=job.backbone,
        num_classes=len(class_names),
        image_size=cfg.model.image_size,
        mean=list(mean),
        std=list(std),
        class_names=class_names,
        config=job.config,
        resize=cfg.model.resize,
        pretrained=weights_source(cfg.model, job.backbone),
    )
    return t, info, mean, std


def _train_job(
    job: Job,
    loop_config: dict[str, Any],
    resume: dict[str, Any] | None,
    finished: list[str],
    *,
    shards,
    batches,
    group_start_seconds: float,
    rank_world_device,
    class_names: list[str],
):
    """One backbone's epochs, ``job.steps_per_epoch`` batches each from the run's stream
    (started here when ``batches`` is None); returns the stream for the next backbone."""
    setup_start = time.perf_counter()
    rank, world, device = rank_world_device
    tc = config_from_dict(job.config).train
    num_classes = len(class_names)
    t, info, mean, std = _build(job, loop_config["train_counts"], class_names, rank, device)
    start_epoch, best, history, restored_epoch = 0, -1.0, [], 0
    if resume:
        _restore(t, resume)
        start_epoch = restored_epoch = resume["epoch"]
        best, history = resume["best_metric"], resume["history"]
        if rank == 0:
            log.info("%s: resumed after epoch %d", job.backbone, restored_epoch)
    tensorboard = _TensorBoard(job.tensorboard_uri) if rank == 0 else None
    train_shard, val_shard = shards
    if batches is None:
        batches = _run_batches(train_shard, tc.batch_size // world, tc, device)
    setup_seconds = time.perf_counter() - setup_start
    job_start = time.perf_counter()

    def validate() -> dict[str, float]:
        source = (
            val_shard
            if isinstance(val_shard, list)
            else val_shard.iter_torch_batches(batch_size=tc.eval_batch_size, device=device)
        )
        images = ({"image": normalise(b["image"], mean, std), "label": b["label"]} for b in source)
        return evaluate(classifier(t.model), images, device, num_classes)

    def epoch_end(record: dict[str, Any], improved: bool) -> None:
        """Rank 0: TensorBoard, history.json, ``best/`` and the run's Ray checkpoint (its whole
        state, for resume); every rank reports the same metrics."""
        start = time.perf_counter()
        done = finished + [job.backbone] if record["epoch"] == tc.epochs else finished
        if rank == 0:
            state = dict(epoch=record["epoch"], best_metric=record["best_val_macro_f1"])
            state.update(history=history, backbone=job.backbone, finished=done)
            _rank0_epoch_end(job, t, info, tensorboard, record, improved, state)
            with tempfile.TemporaryDirectory() as directory:
                _save_checkpoint(directory, t, info, **state)
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(record)
        record["checkpoint_seconds"] = time.perf_counter() - start  # in the next history.json

    engine.fit(
        t,
        epochs=tc.epochs,
        batches=lambda epoch: batches,  # one stream for the whole run
        prepare=lambda b: (normalise(b["image"], mean, std), b["label"]),
        validate=validate,
        trust_warmup_epochs=tc.trust_warmup_epochs,
        steps_per_epoch=job.steps_per_epoch,
        start_epoch=start_epoch,
        best=best,
        history=history,
        tags={"backbone": job.backbone, "restored_epoch": restored_epoch},
        on_epoch_end=epoch_end,
    )
    if rank == 0:  # the last epoch's timings came after its history.json
        _write_json(join(job.output_uri, ckpt.HISTORY_JSON), history)
        _write_json(
            join(job.output_uri, RESULT_JSON),
            _job_summary(job, history, setup_seconds, group_start_seconds, job_start),
        )
    return batches


def _rank0_epoch_end(job, t, info, tensorboard, metrics, improved, state) -> None:
    """TensorBoard, ``history.json`` and (when validation improved) ``best/``."""
    tensorboard.log({k: v for k, v in metrics.items() if k != "backbone"}, metrics["epoch"])
    _write_json(join(job.output_uri, ckpt.HISTORY_JSON), state["history"])
    if improved:
        with tempfile.TemporaryDirectory() as directory:
            _save_checkpoint(directory, t, info, **state)
            _copy_folder(directory, join(job.output_uri, BEST))


def _job_summary(job, history, setup_seconds, group_start_seconds, job_start) -> dict:
    """Where one backbone's time went (the fixed cost outside steady-state training)."""
    best = max(history, key=lambda h: h["val_macro_f1"])
    steady = history[1:] or history
    steady_rate = sum(h["train_images_per_s"] for h in steady) / len(steady)
    images = sum(h["steps"] for h in history) * config_from_dict(job.config).train.batch_size
    seconds = time.perf_counter() - job_start + setup_seconds + group_start_seconds
    return {
        "backbone": job.backbone,
        "best_val_macro_f1": best["val_macro_f1"],
        "best_epoch": int(best["epoch"]),
        "epochs": int(history[-1]["epoch"]),
        "train_images_per_s": history[-1]["train_images_per_s"],
        "data_wait_fraction": history[-1]["data_wait_fraction"],
        "resumed": bool(history[-1]["restored_epoch"]),
        "seconds": seconds,
        "time": {
            "group_start": group_start_seconds,
            "setup": setup_seconds,
            "first_batch_wait": history[0]["data_wait_seconds"],
            "validation": sum(h["val_seconds"] for h in history),
            "checkpoint": sum(h.get("checkpoint_seconds", 0.0) for h in history),
            "steady_images_per_s": steady_rate,
            "images": images,
            "fixed": seconds - images / steady_rate,
        },
    }


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


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


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


def _job(cfg: Config, backbone: str, manifest: Manifest, run_uri: str, tensorboard_uri: str) -> Job:
    return Job(
        backbone=backbone,
        config=config_to_dict(cfg),
        steps_per_epoch=steps_per_epoch(cfg, manifest),
        output_uri=join(run_uri, backbone),
        tensorboard_uri=tensorboard_uri,
    )


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
                "pipeline (train_all trains each input size in a group of its own)"
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
) -> tuple[list[BackboneResult], dict[str, str]]:
    """Train every backbone of ``configs`` (backbone -> its config), in order, in **one** Ray
    Train run: one worker group, one Ray Data pipeline, so Ray's start-up is paid once.

    The run is ``<run dir>/train/<name>`` (default ``run-<time>``); each backbone's best
    checkpoint is ``<run>/<backbone>/best``. A Tune trial passes its own ``name`` (stable across
    a restore, so the run resumes from its checkpoint), ``storage_path``, ``tensorboard_uri``
    and ``callbacks`` (``TuneReportCallback``). ``echo`` gets one line per epoch.
    ``datasets``: passes rendered before (``shared_datasets``), read by every backbone from the
    first; the search renders its trials' passes once this way.

    Returns the trained backbones and the failed or untrained ones (backbone -> error): a
    backbone that raises is recorded and retried from the last checkpoint up to
    ``train.max_failures`` times; the backbones trained before it are kept."""
    from ray.train.torch import TorchTrainer

    configs = {b: with_min_steps(c, b, manifest, echo) for b, c in configs.items()}
    cfg = _check_same_scaling(configs)
    tc = cfg.train
    params = {
        b: count_parameters(build_model(b, len(manifest.classes), c.model.image_size))
        for b, c in configs.items()
    }
    # one pass of the train split per epoch of every backbone, streamed as one; or, with
    # train.shared_passes, max(epochs) passes rendered now and read by every backbone
    epochs = [c.train.epochs for c in configs.values()]
    shared = datasets is not None or (tc.shared_passes and len(configs) > 1)
    if datasets is None:
        # one backbone streams: its rendering overlaps its training
        datasets = (
            shared_datasets(cfg, shards_uri, manifest, max(epochs), echo)
            if shared
            else _datasets(cfg, shards_uri, manifest, sum(epochs))
        )
    run_dir = _absolute(cfg.run_dir)
    name = name or f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    # Ray Train takes a URI or an absolute path (a relative one is not a valid URI)
    storage_path = _absolute(storage_path) if storage_path else join(run_dir, "train")
    run_uri = join(storage_path, name)
    jobs = [
        _job(
            bcfg,
            backbone,
            manifest,
            run_uri,
            _absolute(tensorboard_uri)
            if tensorboard_uri
            else join(run_dir, f"tensorboard/{name}/{backbone}"),
        )
        for backbone, bcfg in configs.items()
    ]
    loop_config = {
        "jobs": [asdict(j) for j in jobs],
        "class_names": list(manifest.classes),
        "train_counts": [manifest.counts["train"][c] for c in manifest.classes],
        "torch_threads": tc.torch_threads,
        "cache_val": small_eval_split(manifest, "val", cfg.model.image_size),
        "eval_batch_size": tc.eval_batch_size,
        "fit_started": time.time(),
        "shared_passes": shared,
    }
    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    trainer = TorchTrainer(
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
    watcher = _ProgressWatcher(jobs, echo) if echo else None
    try:
        result = trainer.fit()
    finally:
        if watcher:
            watcher.stop()
    done = [j for j in jobs if exists(join(j.output_uri, RESULT_JSON)) and _error(j) is None]
    if result.error and not done:
        raise result.error
    failures = {
        j.backbone: _error(j) or f"not trained: {result.error!r}" for j in jobs if j not in done
    }
    return [_backbone_result(j, params[j.backbone]) for j in done], failures


def _datasets(cfg: Config, shards_uri: str, manifest: Manifest, passes: int) -> dict[str, Any]:
    """Train (``passes`` augmented passes, lazy) and val datasets for ``cfg``'s backbones."""
    # uint8 out of Ray Data, normalised per backbone on the worker (its own mean/std): the
    # specs' mean/std are never applied here, so no model is built for them
    specs = transform_specs(
        cfg.model.image_size, cfg.augment, (0.0,) * 3, (1.0,) * 3, cfg.model.resize
    )
    return train_val_datasets(shards_uri, manifest, *specs, passes=passes, seed=cfg.train.seed)


def shared_datasets(
    cfg: Config, shards_uri: str, manifest: Manifest, passes: int, echo=None, prefix="train"
) -> dict[str, Any]:
    """``train.shared_passes``: ``passes`` augmented passes of the train split rendered now,
    with the whole machine, into Ray's object store (``materialize``); every backbone of a
    run, or every trial of a search, then reads them from the first without rendering."""
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


def _backbone_result(job: Job, params: int) -> BackboneResult:
    summary = json.loads(read_bytes(join(job.output_uri, RESULT_JSON)))
    return BackboneResult(
        backbone=job.backbone,
        params=params,
        best_val_macro_f1=summary["best_val_macro_f1"],
        best_epoch=summary["best_epoch"],
        epochs=summary["epochs"],
        train_images_per_s=summary["train_images_per_s"],
        data_wait_fraction=summary["data_wait_fraction"],
        seconds=summary["seconds"],
        checkpoint=join(job.output_uri, BEST),
        run_path=job.output_uri,
        resumed=summary["resumed"],
        time=summary["time"],
    )


class _ProgressWatcher:
    """One ``[train]`` line per epoch on the driver, read from the backbones' ``history.json``
    (rank 0 writes them; the driver only waits in ``fit()``)."""

    def __init__(self, jobs: list[Job], echo, interval: float = 2.0):
        import threading

        self._jobs, self._echo, self._interval = jobs, echo, interval
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        for job in self._jobs:
            uri = join(job.output_uri, ckpt.HISTORY_JSON)
            try:
                history = json.loads(read_bytes(uri))
            except (OSError, ValueError):  # not written yet, or being written
                continue
            epochs = config_from_dict(job.config).train.epochs
            for h in history[self._seen.get(job.backbone, 0) :]:
                self._echo(
                    f"[train] {job.backbone:<22} epoch {h['epoch']}/{epochs}  train loss "
                    f"{h['train_loss']:.3f}  val macro-F1 {h['val_macro_f1']:.3f}  "
                    f"{h['train_images_per_s']:5.0f} img/s"
                )
            self._seen[job.backbone] = len(history)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


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


def train_all(
    cfg: Config,
    shards_uri: str,
    manifest: Manifest,
    echo=print,
    per_backbone: dict[str, Config] | None = None,
) -> list[BackboneResult]:
    """Train every backbone of ``cfg.model.backbones``, one worker group per input size
    (``size_groups``: the backbones of a group share one data pipeline, and Ray's start-up is
    paid once per group); write ``train/summary.json`` (with where each backbone's time went).

    ``per_backbone`` maps a backbone to its own config (``tune.tuned_configs``); the others
    train with ``cfg.for_backbone`` (the profile's recipe per backbone)."""
    check_resources(cfg)
    steps_per_epoch(cfg, manifest)
    configs = {b: (per_backbone or {}).get(b) or cfg.for_backbone(b) for b in cfg.model.backbones}
    groups = size_groups(configs)
    name = f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    results, failures = [], {}
    for number, group in enumerate(groups, 1):
        first = next(iter(group.values()))
        plan = ", ".join(
            f"{b} ({c.train.epochs} epochs, lr {c.train.lr:g}"
            + (f", {_weights_word(c, b)}" if _weights_word(c, b) else "")
            + ")"
            for b, c in group.items()
        )
        which = f" {number} of {len(groups)}" if len(groups) > 1 else ""
        echo(
            f"[train] worker group{which} ({cfg.train.num_workers} worker(s), "
            f"{first.model.image_size} px): {plan}"
        )
        try:
            done, failed = train_backbones(
                group,
                shards_uri,
                manifest,
                echo=echo,
                name=f"{name}-{first.model.image_size}px" if len(groups) > 1 else name,
            )
        except Exception as e:  # written to the summary, then raised
            log.exception("training failed")
            key = "run" if len(groups) == 1 else f"run ({first.model.image_size} px group)"
            done, failed = [], {key: f"{type(e).__name__}: {e}"}
        results += done
        failures.update(failed)
    for result in results:
        echo("[train] " + result.line())
    for backbone, error in failures.items():
        echo(f"[train] {backbone} FAILED: {error}")
    summary = {"results": [asdict(r) for r in results], "failures": failures}
    fs, path = resolve(join(cfg.run_dir, "train"))
    fs.create_dir(path, recursive=True)
    write_bytes(join(cfg.run_dir, "train/summary.json"), json.dumps(summary, indent=2).encode())
    if failures:
        raise RuntimeError(f"{len(failures)} backbone(s) failed: {failures}")
    return results
