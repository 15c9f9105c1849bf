"""Ray Data: Parquet shards -> decode + augment in ``map_batches`` -> Ray Train workers.

The train dataset is lazy and holds every epoch of a run: the shard files once per epoch, each
pass in a new (seeded) random file order, augmented afresh, streamed as one Ray Data execution
(an execution costs seconds to start on a small machine); workers add a local shuffle buffer
and take ``steps_per_epoch`` batches per epoch.

Evaluation splits are transformed once, in order, without augmentation: a
small one on the driver (``eval_dataset``), a large one by Ray Data into the object store.

Images leave the pipeline as uint8 NCHW; each training worker normalises them on its device
with its backbone's mean/std (``augment.normalise``), so one dataset serves every backbone of a
run and ships a quarter of float32's bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data

from logo_train.data.augment import TransformSpec, decode_batch, to_uint8_batch, train_transform
from logo_train.data.shards import Manifest, shard_uris
from logo_train.storage import resolve

COLUMNS = ["image", "label"]
# Small output blocks let batches stream to the trainer while a read task is still running
# (one 1000-row shard of 224 px uint8 images is ~150 MB, which Ray would emit as one block).
TARGET_BLOCK_BYTES = 8 * 1024 * 1024


def configure_data_context(progress_bars: bool = False, preserve_order: bool = False) -> None:
    """Settings every dataset created afterwards captures (Ray copies the context into it).
    ``preserve_order``: blocks leave in input order (a reproducible training stream)."""
    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = TARGET_BLOCK_BYTES
    ctx.execution_options.preserve_order = preserve_order
    # our own per-epoch lines report progress; Ray Data's bars (one set per worker and epoch)
    # would bury them
    ctx.enable_progress_bars = progress_bars


def one_opencv_thread() -> None:
    """OpenCV's own thread pool per call oversubscribes a small machine: Ray Data's map tasks
    run beside the training threads. One thread per task; parallelism comes from tasks."""
    import cv2

    cv2.setNumThreads(1)


def transform_batch(batch: dict[str, np.ndarray], spec: TransformSpec, train: bool) -> dict:
    """One ``map_batches`` call: encoded bytes -> transformed uint8 NCHW + int64 labels."""
    one_opencv_thread()
    images = to_uint8_batch(decode_batch(batch["image"]), spec, train)
    return {"image": images, "label": batch["label"].astype(np.int64)}


def split_dataset(
    shards_uri: str,
    split: str,
    spec: TransformSpec,
    *,
    train: bool,
    manifest: Manifest,
    batch_size: int = 64,
    passes: int = 1,
    seed: int = 0,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of one split, transformed for training (``train``) or evaluation.

    ``passes``: the split's files ``passes`` times over, each pass in its own random file order
    (seeded): one dataset, one Ray Data execution, for every epoch of a run."""
    uris = shard_uris(shards_uri, split, manifest)
    if not uris:
        raise ValueError(f"split {split!r} of {shards_uri} has no shards")
    if train:
        return _train_passes(uris, spec, passes, seed)
    fs, _ = resolve(uris[0])
    ds = ray.data.read_parquet([resolve(u)[1] for u in uris], filesystem=fs)
    return ds.select_columns(COLUMNS).map_batches(
        transform_batch,
        fn_kwargs={"spec": spec, "train": train},
        batch_format="numpy",
        batch_size=batch_size,
    )


def read_transform_shard(batch: dict[str, np.ndarray], spec: TransformSpec) -> Iterator[dict]:
    """``map_batches`` over (shard URI, seed) items (one per call): read the shard, shuffle its
    rows and augment them, both drawn from the item's seed, and yield them in blocks of about
    ``TARGET_BLOCK_BYTES``. Not smaller: Ray Data's split coordinator pays per block (64-row
    blocks halved the training rate on 2 cores).

    The seed makes a pass the same whichever process renders it: the same config gives the
    same training stream, and the shuffle is a full one within each shard (a worker's local
    shuffle buffer on top costs 10-20% of the training rate on 2 cores)."""
    import pyarrow.parquet as pq

    for uri, seed in zip(batch["uri"], batch["seed"], strict=True):
        fs, path = resolve(str(uri))
        table = pq.read_table(path, filesystem=fs, columns=COLUMNS)
        rng = np.random.default_rng(int(seed))
        order = rng.permutation(table.num_rows)
        images = table["image"].take(order).to_pylist()
        labels = np.asarray(table["label"])[order]
        train_transform(spec).set_random_seed(int(rng.integers(2**31)))
        rows = max(1, TARGET_BLOCK_BYTES // (3 * spec.image_size**2))
        for start in range(0, len(images), rows):
            yield transform_batch(
                {"image": images[start : start + rows], "label": labels[start : start + rows]},
                spec,
                train=True,
            )


def pass_items(uris: list[str], passes: int, seed: int) -> list[dict[str, Any]]:
    """The train split ``passes`` times over: each pass in its own random file order, each
    (pass, shard) with its own seed for the row shuffle and the augmentation; all from
    ``seed``."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(passes):
        for i in rng.permutation(len(uris)):
            items.append({"uri": uris[i], "seed": int(rng.integers(2**63))})
    return items


def _train_passes(uris: list[str], spec: TransformSpec, passes: int, seed: int) -> ray.data.Dataset:
    """The train split ``passes`` times over (``pass_items``): a dataset of shard URIs mapped
    to augmented rows (Ray Data's parquet reader would read a file listed twice only once).
    Its blocks come out in item order (``preserve_order``), so the stream is reproducible."""
    items = pass_items(uris, passes, seed)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(
        read_transform_shard,
        fn_kwargs={"spec": spec},
        batch_format="numpy",
        batch_size=1,
    )


SMALL_EVAL_BYTES = 256 * 2**20
"""An eval split whose transformed uint8 tensors fit in this is prepared on the driver."""


def small_eval_split(manifest: Manifest, split: str, image_size: int) -> bool:
    """True when the split's transformed uint8 images fit in ``SMALL_EVAL_BYTES``."""
    return manifest.split_rows(split) * 3 * image_size**2 <= SMALL_EVAL_BYTES


def eval_dataset(
    shards_uri: str, split: str, spec: TransformSpec, manifest: Manifest
) -> ray.data.Dataset:
    """An evaluation split, transformed once (its transform is deterministic) instead of being
    decoded again by every worker in every epoch. A small split is decoded on the driver and
    handed to Ray as one Arrow table (about a second, where starting Ray Data's read and map
    tasks costs 10-15 s on a 2-core machine); a large one is materialised by Ray Data into the
    object store, never the driver's memory."""
    if small_eval_split(manifest, split, spec.image_size):
        from ray.data.extensions import ArrowTensorArray

        from logo_train.data.shards import read_split

        table = read_split(shards_uri, split, COLUMNS)
        if table.num_rows == 0:
            raise ValueError(f"split {split!r} of {shards_uri} has no rows")
        batch = transform_batch(
            {"image": table["image"].to_pylist(), "label": np.asarray(table["label"])},
            spec,
            train=False,
        )
        return ray.data.from_arrow(
            pa.table(
                {
                    "image": ArrowTensorArray.from_numpy(batch["image"]),
                    "label": pa.array(batch["label"]),
                }
            )
        )
    return split_dataset(shards_uri, split, spec, train=False, manifest=manifest).materialize()


def train_val_datasets(
    shards_uri: str,
    manifest: Manifest,
    train_spec: TransformSpec,
    eval_spec: TransformSpec,
    passes: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Train: lazy, re-augmented and in a new file order on every pass, ``passes`` passes in
    one dataset, so a run streams all its epochs without restarting Ray Data each epoch (which
    costs ~3 s on 2 cores). Val: transformed once (``eval_dataset``)."""
    configure_data_context(preserve_order=True)
    return {
        "train": split_dataset(
            shards_uri,
            "train",
            train_spec,
            train=True,
            manifest=manifest,
            passes=passes,
            seed=seed,
        ),
        "val": eval_dataset(shards_uri, "val", eval_spec, manifest),
    }
