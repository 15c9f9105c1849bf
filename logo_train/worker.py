"""What each Ray Train worker runs: ``train_loop_per_worker``, read like Ray's own
``train_func`` — build, restore, ``engine.fit(...)``, report. A one-worker Tune trial runs the
same loop in its own process (``train_in_trial``): no worker group to start, Tune's report and
checkpoint instead of Ray Train's (``TrialSession``).

One worker group trains every backbone of a run (``Job``) in turn: Ray's start-up (worker
processes, process group, Ray Data's executor) is paid once per run, not once per backbone.
gloo on CPU, NCCL on GPU, via ``ray.train.torch.prepare_model``. Every epoch each rank reports
the same metrics and rank 0 attaches a checkpoint of the whole run's state (``Checkpointer``);
after a worker dies Ray restarts the group (``FailureConfig``) and the loop resumes from
``ray.train.get_checkpoint()``: the finished backbones are skipped, the interrupted one goes on
with its epoch, optimizer, scheduler, scaler and history restored.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch

from logo_train import checkpoint as ckpt
from logo_train import engine
from logo_train.backbones import weights_source
from logo_train.config import Config, config_to_dict
from logo_train.data.augment import normalise
from logo_train.engine import Training, build_training, classifier, evaluate, trust_head
from logo_train.models import normalisation
from logo_train.storage import copy_dir, exists, join, read_json, write_json

log = logging.getLogger(__name__)

BEST = "best"
"""A backbone's best checkpoint (by val macro-F1): ``<run>/<backbone>/best/``."""
RESULT_JSON = "result.json"


@dataclass
class Job:
    """One backbone of a worker group's run."""

    backbone: str
    config: Config
    """The resolved config this backbone trains with (a per-backbone search's best)."""
    steps_per_epoch: int
    output_uri: str
    """``<run>/<backbone>``: ``best/`` (the best checkpoint), ``history.json``, ``result.json``."""
    tensorboard_uri: str

    def error(self) -> str | None:
        """The error this backbone's training last raised in this run, if it did not finish
        since."""
        uri = join(self.output_uri, RESULT_JSON)
        return read_json(uri).get("error") if exists(uri) else None


class TrainSession:
    """The loop on a Ray Train worker: ``ray.train``'s context, dataset shards, report and
    checkpoint; DDP through ``prepare_model``."""

    wrap = staticmethod(ray.train.torch.prepare_model)

    def place(self) -> tuple[int, int, torch.device]:
        """(rank, world size, device)."""
        context = ray.train.get_context()
        return context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()

    def shard(self, name: str):
        return ray.train.get_dataset_shard(name)

    def report(self, record: dict[str, Any], directory: str | None = None) -> None:
        """Every rank reports the same metrics; rank 0 attaches the checkpoint ``directory``."""
        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(record, checkpoint=checkpoint)

    def last_checkpoint(self):
        return ray.train.get_checkpoint()


class TrialSession:
    """The loop in a Tune trial's own process (one worker, no Ray Train worker group): the
    datasets as handed, Tune's report (ASHA sees every epoch) and Tune's checkpoint (a restored
    trial goes on after its last epoch)."""

    wrap = None

    def __init__(self, datasets: dict[str, Any], use_gpu: bool):
        self.datasets, self.use_gpu = datasets, use_gpu

    def place(self) -> tuple[int, int, torch.device]:
        # Tune sets CUDA_VISIBLE_DEVICES to the trial's GPU
        return 0, 1, torch.device("cuda" if self.use_gpu else "cpu")

    def shard(self, name: str):
        return self.datasets[name]

    def report(self, record: dict[str, Any], directory: str | None = None) -> None:
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(directory) if directory else None
        ray.tune.report(record, checkpoint=checkpoint)

    def last_checkpoint(self):
        import ray.tune

        return ray.tune.get_checkpoint()


@dataclass
class WorkerContext:
    """Who this worker is and what every backbone of the run shares."""

    rank: int
    world: int
    device: torch.device
    class_names: list[str]
    train_counts: list[int]
    """Training rows per class (the class-weighted losses)."""
    session: TrainSession | TrialSession

    @classmethod
    def current(cls, loop_config: dict[str, Any], session) -> WorkerContext:
        rank, world, device = session.place()
        return cls(
            rank=rank,
            world=world,
            device=device,
            class_names=loop_config["class_names"],
            train_counts=loop_config["train_counts"],
            session=session,
        )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train every job (backbone) of ``loop_config["jobs"]`` in turn in this worker group,
    from the run's last Ray checkpoint when there is one."""
    _run_jobs(loop_config, TrainSession())


def train_in_trial(loop_config: dict[str, Any], datasets: dict[str, Any], use_gpu: bool) -> None:
    """The same loop in a Tune trial's process, on ``datasets`` (``train`` and ``val``),
    from the trial's last Tune checkpoint when there is one."""
    sys.unraisablehook = _quiet_stop
    _run_jobs(loop_config, TrialSession(datasets, use_gpu))


def _quiet_stop(unraisable) -> None:
    """Tune ends a trial it stops (ASHA) with SIGTERM; Ray's handler raises SystemExit wherever
    the process's main thread is, and inside a finaliser Python prints that as an 'Exception
    ignored' traceback. That exit is the stop Tune asked for; anything else is printed."""
    if not isinstance(unraisable.exc_value, SystemExit):
        sys.__unraisablehook__(unraisable)


def _run_jobs(loop_config: dict[str, Any], session: TrainSession | TrialSession) -> None:
    loop_start = time.time()
    worker = WorkerContext.current(loop_config, session)
    if loop_config.get("torch_threads"):
        torch.set_num_threads(loop_config["torch_threads"])
    state, finished = _last_state(session)
    train_shard = session.shard("train")
    val_shard = session.shard("val")
    if loop_config["cache_val"]:  # a small split: fetched once, not once per epoch
        val_shard = list(
            val_shard.iter_torch_batches(
                batch_size=loop_config["eval_batch_size"], device=worker.device
            )
        )
    batches = None
    group_start = loop_start - loop_config["fit_started"]
    todo = [j for j in loop_config["jobs"] if j.backbone not in finished]
    for index, job in enumerate(todo):
        resume = state if state and state["backbone"] == job.backbone else None
        if loop_config["shared_passes"] and batches is not None:
            batches.close()  # every backbone reads the shared passes from the first
            batches = None
        try:
            batches = _train_job(
                job,
                worker,
                resume,
                finished,
                shards=(train_shard, val_shard),
                batches=batches,
                group_start_seconds=group_start if index == 0 else 0.0,
            )
        except Exception as e:
            # on record, then Ray restarts the group (a trial: Tune retries it) from the last
            # checkpoint (FailureConfig):
            # a worker that died mid-epoch costs a retry; an error that repeats stops the run
            # after train.max_failures, keeping the backbones trained before it
            if worker.rank == 0:
                write_json(
                    join(job.output_uri, RESULT_JSON),
                    {"backbone": job.backbone, "error": f"{type(e).__name__}: {e}"},
                )
            raise
        finished.append(job.backbone)
    if batches is not None:
        # end the run's stream on the worker's side: Ray Data's split coordinator shuts its
        # executor down once every split has ended, which withdraws the executor's resource
        # request to the autoscaler; a stream left open holds a worker node up to 180 s after
        # the job (Ray 2.60's request expiry)
        batches.close()


def _last_state(session) -> tuple[dict[str, Any] | None, list[str]]:
    """The run's last checkpoint's state (None on a first start) and the backbones it had
    finished."""
    resume_from = session.last_checkpoint()
    if not resume_from:
        return None, []
    with resume_from.as_directory() as directory:
        state = ckpt.load_state(directory)
    return state, list(state["finished"])


def _train_job(
    job: Job,
    worker: WorkerContext,
    resume: dict[str, Any] | None,
    finished: list[str],
    *,
    shards,
    batches,
    group_start_seconds: float,
):
    """One backbone's epochs, ``job.steps_per_epoch`` batches each from the run's stream
    (started here when ``batches`` is None); returns the stream for the next backbone."""
    setup_start = time.perf_counter()
    tc = job.config.train
    t, info, mean, std = _build(job, worker)
    checkpointer = Checkpointer(job, t, info, worker, finished)
    if resume:
        checkpointer.restore(resume)
    train_shard, val_shard = shards
    if batches is None:
        batches = _run_batches(train_shard, tc.batch_size // worker.world, tc, worker.device)
    setup_seconds = time.perf_counter() - setup_start
    job_start = time.perf_counter()

    def validate() -> dict[str, float]:
        source = (
            val_shard
            if isinstance(val_shard, list)
            else val_shard.iter_torch_batches(batch_size=tc.eval_batch_size, device=worker.device)
        )
        images = ({"image": normalise(b["image"], mean, std), "label": b["label"]} for b in source)
        return evaluate(classifier(t.model), images, worker.device, len(worker.class_names))

    engine.fit(
        t,
        epochs=tc.epochs,
        batches=lambda epoch: batches,  # one stream for the whole run
        prepare=lambda b: (normalise(b["image"], mean, std), b["label"]),
        validate=validate,
        trust_warmup_epochs=tc.trust_warmup_epochs,
        steps_per_epoch=job.steps_per_epoch,
        start_epoch=checkpointer.epoch,
        best=checkpointer.best,
        history=checkpointer.history,
        tags={"backbone": job.backbone, "restored_epoch": checkpointer.epoch},
        on_epoch_end=checkpointer.epoch_end,
        patience=tc.patience,
        min_delta=tc.min_delta,
    )
    checkpointer.finish(
        job_summary(job, checkpointer.history, setup_seconds, group_start_seconds, job_start)
    )
    return batches


def _build(job: Job, worker: WorkerContext):
    """The backbone's training state (DDP-wrapped), its checkpoint info and normalisation."""
    cfg = job.config
    torch.manual_seed(cfg.train.seed + worker.rank)
    t = build_training(
        cfg,
        job.backbone,
        len(worker.class_names),
        worker.train_counts,
        job.steps_per_epoch,
        worker.device,
        wrap=worker.session.wrap,
    )
    mean, std = normalisation(classifier(t.model))
    info = ckpt.ModelInfo(
        backbone=job.backbone,
        num_classes=len(worker.class_names),
        image_size=cfg.model.image_size,
        mean=list(mean),
        std=list(std),
        class_names=worker.class_names,
        config=config_to_dict(cfg),  # model.json: plain JSON
        resize=cfg.model.resize,
        pretrained=weights_source(cfg.model, job.backbone),
        test_views=list(cfg.model.test_views),
    )
    return t, info, mean, std


class Checkpointer:
    """One backbone's checkpoints in a worker: restore from the run's last Ray checkpoint, and
    at every epoch's end, on rank 0, TensorBoard, ``history.json``, ``best/`` when validation
    improved and the run's Ray checkpoint (its whole state, for resume); every rank reports the
    same metrics. ``epoch``, ``best`` and ``history`` are where training starts (0, -1, [] on a
    first start)."""

    def __init__(
        self,
        job: Job,
        training: Training,
        info: ckpt.ModelInfo,
        worker: WorkerContext,
        finished: list[str],
    ):
        self.job, self.t, self.info, self.worker = job, training, info, worker
        self.finished = finished
        self.epoch, self.best, self.history = 0, -1.0, []
        self.tensorboard = _TensorBoard(job.tensorboard_uri) if worker.rank == 0 else None

    def restore(self, state: dict[str, Any]) -> None:
        t = self.t
        classifier(t.model).load_state_dict(state["model"])
        if trust_head(t.model) is not None:
            trust_head(t.model).load_state_dict(state["trust_head"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best, self.history = state["epoch"], state["best_metric"], state["history"]
        if self.worker.rank == 0:
            log.info("%s: resumed after epoch %d", self.job.backbone, self.epoch)

    def epoch_end(self, record: dict[str, Any], improved: bool) -> None:
        """``engine.fit``'s ``on_epoch_end``."""
        start = time.perf_counter()
        if self.worker.rank == 0:
            last = record["epoch"] == self.job.config.train.epochs
            state = dict(epoch=record["epoch"], best_metric=record["best_val_macro_f1"])
            state.update(history=self.history, backbone=self.job.backbone)
            state.update(finished=self.finished + [self.job.backbone] if last else self.finished)
            self.tensorboard.log(
                {k: v for k, v in record.items() if k != "backbone"}, record["epoch"]
            )
            write_json(join(self.job.output_uri, ckpt.HISTORY_JSON), self.history)
            if improved:
                with tempfile.TemporaryDirectory() as directory:
                    self._save(directory, state)
                    copy_dir(directory, join(self.job.output_uri, BEST))
            with tempfile.TemporaryDirectory() as directory:
                self._save(directory, state)
                self.worker.session.report(record, directory)
        else:
            self.worker.session.report(record)
        record["checkpoint_seconds"] = time.perf_counter() - start  # in the next history.json

    def finish(self, summary: dict[str, Any]) -> None:
        """Rank 0: the last ``history.json`` (the last epoch's timings came after it) and
        ``result.json`` (the backbone's summary: that it finished)."""
        if self.worker.rank == 0:
            write_json(join(self.job.output_uri, ckpt.HISTORY_JSON), self.history)
            write_json(join(self.job.output_uri, RESULT_JSON), summary)

    def _save(self, directory: str, state: dict[str, Any]) -> None:
        t = self.t
        ckpt.save(
            directory,
            info=self.info,
            model=classifier(t.model),
            trust_head=trust_head(t.model),
            optimizer=t.optimizer,
            scheduler=t.scheduler,
            scaler=t.scaler,
            **state,
        )


def job_summary(job: Job, history, setup_seconds, group_start_seconds, job_start) -> dict:
    """Where one backbone's time went (the fixed cost outside steady-state training)."""
    best = max(history, key=lambda h: h["val_macro_f1"])
    steady = history[1:] or history
    steady_rate = sum(h["train_images_per_s"] for h in steady) / len(steady)
    images = sum(h["steps"] for h in history) * job.config.train.batch_size
    seconds = time.perf_counter() - job_start + setup_seconds + group_start_seconds
    return {
        "backbone": job.backbone,
        "best_val_macro_f1": best["val_macro_f1"],
        "best_epoch": int(best["epoch"]),
        "epochs": int(history[-1]["epoch"]),
        "stopped_early": bool(history[-1].get("stopped_early", False)),
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
        copy_dir(self.local, self.uri)


def _run_batches(shard, batch_size: int, tc, device) -> _Prefetch:
    """The run's training batches: one stream over every pass of every backbone (the train
    dataset is the split repeated, ``data.datasets.train_val_datasets``), pulled ahead in a
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
            stream = iter(iterable)
            try:
                for item in stream:
                    if self._closed:
                        break
                    self._queue.put(item)
            except BaseException as e:  # re-raised in the training thread
                self._error = e
            finally:
                # a stream stopped early is closed here, in the thread that iterated it, not
                # whenever the garbage collector gets to it: Ray Data ends the split's
                # iteration (and, the last split, its executor) in the generator's finally
                if hasattr(stream, "close"):
                    stream.close()
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
