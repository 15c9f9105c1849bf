"""Training in one process, without Ray: the same model, loss, optimiser, step and epoch loop
as a Ray Train worker (``logo_train.engine.fit``), fed by a torch ``DataLoader``. For studies
that train many small models on one machine (the noise study), for the Ray-overhead
benchmark, and for machines where Ray is not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from logo_train.config import Config
from logo_train.data.augment import (
    TransformSpec,
    decode_batch,
    to_tensor_batch,
    transform_specs,
)
from logo_train.data.shards import Manifest, read_split
from logo_train.engine import Training, build_training, classifier, evaluate, fit
from logo_train.models import build_model, normalisation


class ShardDataset(Dataset):
    """One split in memory, transformed per item like Ray Data does. ``decoded``: decode the
    images once up front (fast epochs); else keep the encoded bytes and decode per item (the
    same work per epoch as the Ray Data pipeline, for a fair benchmark)."""

    def __init__(self, uri: str, split: str, spec: TransformSpec, train: bool, decoded=True):
        table = read_split(uri, split, ["image", "label"])
        images = table["image"].to_pylist()
        self.images = decode_batch(images) if decoded else images
        self.decoded = decoded
        self.labels = np.asarray(table["label"].to_pylist(), np.int64)
        self.spec, self.train = spec, train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int | list[int]):
        """One item, or a whole batch for a list of indices (one call per batch: the loader
        processes send whole batches, not single images)."""
        if isinstance(i, list):
            chosen = [self.images[k] for k in i]
            images = chosen if self.decoded else decode_batch(chosen)
            batch = to_tensor_batch(images, self.spec, train=self.train)
            return torch.from_numpy(batch), torch.from_numpy(self.labels[i])
        image = self.images[i] if self.decoded else decode_batch([self.images[i]])[0]
        out = to_tensor_batch([image], self.spec, train=self.train)[0]
        return torch.from_numpy(out), int(self.labels[i])


def one_thread_per_worker(_: int) -> None:
    """DataLoader ``worker_init_fn``: one torch and one OpenCV thread per loader process (many
    processes each with a thread per core thrash the CPU)."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def loader(
    dataset: Dataset, batch_size: int, *, train: bool, workers: int, seed: int = 0
) -> DataLoader:
    """Whole batches per fetch (``ShardDataset`` takes index lists); shuffled, full batches
    only, when ``train``."""
    if workers:
        # a loader process forked while OpenCV's thread pool is running hangs in its first
        # cv2 call (seen: the second fit_local of a process never got a batch); with one
        # OpenCV thread in the parent there is no pool to inherit. The parent only trains.
        import cv2

        cv2.setNumThreads(1)
    generator = torch.Generator().manual_seed(seed)
    order = RandomSampler(dataset, generator=generator) if train else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=BatchSampler(order, batch_size, drop_last=train),
        num_workers=workers,
        worker_init_fn=one_thread_per_worker if workers else None,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )


def model_transform_specs(
    cfg: Config, backbone: str, num_classes: int
) -> tuple[TransformSpec, TransformSpec]:
    """(train, eval) transforms with ``backbone``'s own normalisation."""
    mean, std = normalisation(build_model(backbone, num_classes, cfg.model.image_size))
    return transform_specs(cfg.model.image_size, cfg.augment, mean, std, cfg.model.resize)


@dataclass
class LocalFit:
    training: Training
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        """Backbone (+ trust head when trained with one), eval mode."""
        return self.training.model.eval()

    @property
    def classifier(self) -> nn.Module:
        return classifier(self.training.model).eval()


def fit_local(
    cfg: Config,
    backbone: str,
    shards_uri: str,
    manifest: Manifest,
    *,
    device: str | None = None,
    loader_workers: int = 1,
    eval_every: int = 1,
    decode_once: bool = True,
    train_indices: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    echo: Callable[[str], None] | None = print,
    on_epoch_end: Callable[[Training, dict], None] | None = None,
) -> LocalFit:
    """Train ``backbone`` on the shards' train split (or its rows ``train_indices``) for
    ``cfg.train.epochs`` epochs (global batch ``cfg.train.batch_size``), validating every
    ``eval_every`` epochs and at the end. ``train_labels`` (one per row of the whole split)
    replace the split's labels (a cleaning round's relabelled set). ``decode_once=False``
    decodes the training images in every epoch, as the Ray Data pipeline does (a fair
    comparison of the two, ``benchmarks/bench_train.py``). ``on_epoch_end(training, record)``
    runs after every epoch's record (e.g. to score the training rows as the model learns,
    ``benchmarks/audit_dynamics.py``); the model is put back in training mode after it."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_classes = len(manifest.classes)
    train_spec, eval_spec = model_transform_specs(cfg, backbone, num_classes)
    train_set, labels = _train_set(shards_uri, train_spec, decode_once, train_indices, train_labels)
    val_set = ShardDataset(shards_uri, "val", eval_spec, train=False)
    train_loader = loader(
        train_set, tc.batch_size, train=True, workers=loader_workers, seed=tc.seed
    )
    val_loader = loader(val_set, tc.eval_batch_size, train=False, workers=0)
    steps = len(train_set) // tc.batch_size
    if steps < 1:
        raise ValueError(
            f"config field 'train.batch_size' = {tc.batch_size}: larger than the "
            f"{len(train_set)} training rows allow"
        )
    counts = np.bincount(labels, minlength=num_classes).tolist()
    t = build_training(cfg, backbone, num_classes, counts, steps, dev)

    def epoch_end(record: dict, improved: bool) -> None:
        if echo:
            echo(epoch_line(backbone, record, tc.epochs))
        if on_epoch_end:
            on_epoch_end(t, record)
            t.model.train()

    history = fit(
        t,
        epochs=tc.epochs,
        batches=lambda epoch: iter(train_loader),
        prepare=lambda b: (b[0].to(dev, non_blocking=True), b[1].to(dev, non_blocking=True)),
        validate=lambda: evaluate(classifier(t.model), _pairs(val_loader), dev, num_classes),
        trust_warmup_epochs=tc.trust_warmup_epochs,
        validate_every=eval_every,
        on_epoch_end=epoch_end if echo or on_epoch_end else None,
        patience=tc.patience,
        min_delta=tc.min_delta,
    )
    return LocalFit(t, history)


def _train_set(shards_uri, spec, decode_once, indices, labels) -> tuple[Dataset, np.ndarray]:
    """The train split as a dataset (its rows ``indices``, with ``labels`` for the whole
    split when given) and the labels it trains on."""
    train_set = ShardDataset(shards_uri, "train", spec, train=True, decoded=decode_once)
    if labels is not None:
        if len(labels) != len(train_set.labels):
            raise ValueError(
                f"train_labels has {len(labels)} labels, the train split of "
                f"{shards_uri} {len(train_set.labels)} rows"
            )
        train_set.labels = np.asarray(labels, np.int64)
    if indices is None:
        return train_set, train_set.labels
    return Subset(train_set, indices.tolist()), train_set.labels[indices]


def epoch_line(backbone: str, record: dict, epochs: int) -> str:
    shown = ("train_loss", "train_mean_trust", "val_loss", "val_macro_f1", "lr")
    return (
        f"  {backbone} epoch {record['epoch']}/{epochs} "
        + " ".join(f"{k}={record[k]:.3g}" for k in shown if k in record)
        + f" images/s={record['train_images_per_s']:.0f}"
    )


def _pairs(data_loader: DataLoader):
    for x, y in data_loader:
        yield {"image": x, "label": y}


def evaluate_split(
    model: nn.Module, cfg: Config, backbone: str, shards_uri: str, manifest: Manifest, split: str
) -> dict[str, float]:
    """Metrics of ``model`` (a classifier) on a whole split, eval transform."""
    _, eval_spec = model_transform_specs(cfg, backbone, len(manifest.classes))
    data = loader(
        ShardDataset(shards_uri, split, eval_spec, train=False),
        cfg.train.eval_batch_size,
        train=False,
        workers=0,
    )
    device = next(model.parameters()).device
    return evaluate(model, _pairs(data), device, len(manifest.classes))
