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
from dataclasses import asdict, dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from logo_train import checkpoint as ckpt
from logo_train.config import Config, config_from_dict, config_to_dict
from logo_train.data.augment import transform_specs
from logo_train.data.pipeline import train_val_datasets
from logo_train.data.shards import Manifest, join, resolve, write_bytes
from logo_train.engine import (
    build_training,
    classifier,
    evaluate,
    train_step,
    trust_head,
)
from logo_train.models import build_model, count_parameters, normalisation

log = logging.getLogger(__name__)

SELECT_METRIC = "val_macro_f1"


# --- worker side ------------------------------------------------------------------------------


def _all_mean(values: list[float], device: torch.device) -> list[float]:
    """Mean over ranks (identity on one worker)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


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

        def pump() -> None:
            try:
                for item in iterable:
                    self._queue.put(item)
            except BaseException as e:  # re-raised in the training thread
                self._error = e
            finally:
                self._queue.put(self._END)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg = config_from_dict(loop_config["config"])
    backbone: str = loop_config["backbone"]
    class_names: list[str] = loop_config["class_names"]
    num_classes = len(class_names)
    tc = cfg.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(tc.seed + rank)

    t = build_training(
        cfg,
        backbone,
        num_classes,
        loop_config["train_counts"],
        loop_config["steps_per_epoch"],
        device,
        wrap=ray.train.torch.prepare_model,
    )
    model, optimizer, scheduler, scaler = t.model, t.optimizer, t.scheduler, t.scaler
    mean, std = normalisation(classifier(model))

    start_epoch, best, history, restored_epoch = 0, -1.0, [], 0
    resume_from = ray.train.get_checkpoint()
    if resume_from:
        with resume_from.as_directory() as directory:
            state = ckpt.load_state(directory)
        classifier(model).load_state_dict(state["model"])
        if trust_head(model) is not None:
            trust_head(model).load_state_dict(state["trust_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = restored_epoch = state["epoch"]
        best, history = state["best_metric"], state["history"]
        if rank == 0:
            log.info("%s: resumed after epoch %d", backbone, restored_epoch)

    info = ckpt.ModelInfo(
        backbone=backbone,
        num_classes=num_classes,
        image_size=cfg.model.image_size,
        mean=list(mean),
        std=list(std),
        class_names=class_names,
        config=loop_config["config"],
    )
    tensorboard = _TensorBoard(loop_config["tensorboard_uri"]) if rank == 0 else None
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    per_worker_batch = tc.batch_size // world

    def epoch_batches() -> _Prefetch:
        return _Prefetch(
            train_shard.iter_torch_batches(
                batch_size=per_worker_batch,
                drop_last=True,
                local_shuffle_buffer_size=tc.shuffle_buffer or None,
                device=device,
            )
        )

    batches = epoch_batches() if start_epoch < tc.epochs else None
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        loss_sum, trust_sum, seen, wait, steps = 0.0, 0.0, 0, 0.0, 0
        trust_active = epoch >= tc.trust_warmup_epochs
        start = time.perf_counter()
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t_wait
            if batch is None:
                break
            y = batch["label"]
            out = train_step(t, batch["image"], y, trust_active)
            loss_sum += out["loss"].item() * len(y)
            trust_sum += out["trust"].item() * len(y) if "trust" in out else 0.0
            seen += len(y)
            steps += 1
        train_seconds = time.perf_counter() - start
        if epoch + 1 < tc.epochs:
            batches = epoch_batches()
        train_loss, train_trust, wait_fraction, local_rate = _all_mean(
            [
                loss_sum / max(seen, 1),
                trust_sum / max(seen, 1),
                wait / max(train_seconds, 1e-9),
                seen / train_seconds,
            ],
            device,
        )
        val_batches = val_shard.iter_torch_batches(batch_size=tc.eval_batch_size, device=device)
        val = evaluate(classifier(model), val_batches, device, num_classes)

        best = max(best, val["macro_f1"])
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            **{f"val_{k}": v for k, v in val.items() if k not in ("loss", "samples")},
            "best_val_macro_f1": best,
            "lr": optimizer.param_groups[0]["lr"],
            "train_images_per_s": local_rate * world,
            "data_wait_fraction": wait_fraction,
            "steps": steps,
            "epoch_seconds": time.perf_counter() - start,
            "restored_epoch": restored_epoch,
        }
        if t.needs_trust:
            metrics["train_mean_trust"] = train_trust
            metrics["trust_active"] = float(trust_active)
        history.append(metrics)
        if rank == 0:
            tensorboard.log(metrics, epoch + 1)
            with tempfile.TemporaryDirectory() as directory:
                ckpt.save(
                    directory,
                    info=info,
                    model=classifier(model),
                    trust_head=trust_head(model),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    epoch=epoch + 1,
                    best_metric=best,
                    history=history,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)


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
    resumed: bool

    def line(self) -> str:
        return (
            f"{self.backbone:<22} val macro-F1 {self.best_val_macro_f1:.3f} "
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


def steps_per_epoch(cfg: Config, manifest: Manifest) -> int:
    per_worker_rows = manifest.split_rows("train") // cfg.train.num_workers
    steps = per_worker_rows // (cfg.train.batch_size // cfg.train.num_workers)
    if steps < 1:
        raise ValueError(
            f"config field 'train.batch_size' = {cfg.train.batch_size}: larger than the "
            f"{manifest.split_rows('train')} training rows allow"
        )
    return steps


def train_backbone(
    cfg: Config,
    backbone: str,
    shards_uri: str,
    manifest: Manifest,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    tensorboard_uri: str | None = None,
    callbacks: list | None = None,
) -> BackboneResult:
    """Train one backbone with Ray Train and return where its best checkpoint is.

    By default the run is ``<run dir>/train/<backbone>-<time>``; a Tune trial passes its own
    ``name`` (stable across a restore, so the run resumes from its checkpoint), ``storage_path``,
    ``tensorboard_uri`` and ``callbacks`` (``TuneReportCallback``)."""
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    model = build_model(backbone, len(manifest.classes), cfg.model.image_size)
    mean, std = normalisation(model)
    params = count_parameters(model)
    del model
    specs = transform_specs(cfg.model.image_size, cfg.augment, mean, std)
    datasets = train_val_datasets(shards_uri, manifest, *specs)
    run_dir = _absolute(cfg.run_dir)
    name = name or f"{backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
    loop_config = {
        "config": config_to_dict(cfg),
        "backbone": backbone,
        "class_names": list(manifest.classes),
        "train_counts": [manifest.counts["train"][c] for c in manifest.classes],
        "steps_per_epoch": steps_per_epoch(cfg, manifest),
        "tensorboard_uri": tensorboard_uri or join(run_dir, f"tensorboard/{name}"),
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
            storage_path=storage_path or join(run_dir, "train"),
            callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=tc.checkpoints_to_keep,
                checkpoint_score_attribute=SELECT_METRIC,
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    if result.error:
        raise result.error
    best_ckpt, best = max(result.best_checkpoints, key=lambda cm: cm[1][SELECT_METRIC])
    last = result.metrics
    return BackboneResult(
        backbone=backbone,
        params=params,
        best_val_macro_f1=best[SELECT_METRIC],
        best_epoch=int(best["epoch"]),
        epochs=int(last["epoch"]),
        train_images_per_s=float(last["train_images_per_s"]),
        data_wait_fraction=float(last["data_wait_fraction"]),
        seconds=seconds,
        checkpoint=best_ckpt.path,
        run_path=result.path,
        resumed=bool(last["restored_epoch"]),
    )


def train_all(
    cfg: Config,
    shards_uri: str,
    manifest: Manifest,
    echo=print,
    per_backbone: dict[str, Config] | None = None,
) -> list[BackboneResult]:
    """Train every backbone of ``cfg.model.backbones`` in turn; write ``train/summary.json``.

    ``per_backbone`` maps a backbone to its own config (a per-backbone search's best)."""
    check_resources(cfg)
    steps_per_epoch(cfg, manifest)
    results, failures = [], {}
    for backbone in cfg.model.backbones:
        bcfg = (per_backbone or {}).get(backbone, cfg)
        echo(f"[train] {backbone}: {bcfg.train.epochs} epochs, {bcfg.train.num_workers} workers")
        try:
            result = train_backbone(bcfg, backbone, shards_uri, manifest)
        except Exception as e:  # keep training the others; report every failure at the end
            log.exception("training %s failed", backbone)
            failures[backbone] = f"{type(e).__name__}: {e}"
            echo(f"[train] {backbone} FAILED: {failures[backbone]}")
            continue
        results.append(result)
        echo("[train] " + result.line())
    summary = {"results": [asdict(r) for r in results], "failures": failures}
    fs, path = resolve(join(cfg.run_dir, "train"))
    fs.create_dir(path, recursive=True)
    write_bytes(join(cfg.run_dir, "train/summary.json"), json.dumps(summary, indent=2).encode())
    if failures:
        raise RuntimeError(f"{len(failures)} backbone(s) failed: {failures}")
    return results
