"""Ray Data: Parquet shards -> decode + augment in ``map_batches`` -> Ray Train workers.

The train dataset is lazy: every epoch re-reads the shards and re-runs the augmentation (fresh
random transforms per epoch), reading its files in a new random order, and workers add a local
shuffle buffer. Evaluation splits are transformed once, in order, without augmentation: a
small one on the driver (``eval_dataset``), a large one by Ray Data into the object store.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray.data

from logo_train.data.augment import TransformSpec, decode_batch, to_tensor_batch
from logo_train.data.shards import Manifest, resolve, shard_uris

COLUMNS = ["image", "label"]
# Small output blocks let batches stream to the trainer while a read task is still running
# (one 1000-row shard of 64 px float32 images is ~50 MB, which Ray would emit as one block).
TARGET_BLOCK_BYTES = 8 * 1024 * 1024


def configure_data_context(progress_bars: bool = False) -> None:
    """Settings every dataset created afterwards captures (Ray copies the context into it)."""
    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = TARGET_BLOCK_BYTES
    # our own per-epoch lines report progress; Ray Data's bars (one set per worker and epoch)
    # would bury them
    ctx.enable_progress_bars = progress_bars


def transform_batch(batch: dict[str, np.ndarray], spec: TransformSpec, train: bool) -> dict:
    """One ``map_batches`` call: encoded bytes -> normalised float32 NCHW + int64 labels."""
    images = to_tensor_batch(decode_batch(batch["image"]), spec, train)
    return {"image": images, "label": batch["label"].astype(np.int64)}


def split_dataset(
    shards_uri: str,
    split: str,
    spec: TransformSpec,
    *,
    train: bool,
    manifest: Manifest,
    batch_size: int = 64,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of one split, transformed for training (``train``) or evaluation."""
    uris = shard_uris(shards_uri, split, manifest)
    if not uris:
        raise ValueError(f"split {split!r} of {shards_uri} has no shards")
    fs, _ = resolve(uris[0])
    paths = [resolve(u)[1] for u in uris]
    ds = ray.data.read_parquet(paths, filesystem=fs, shuffle="files" if train else None)
    return ds.select_columns(COLUMNS).map_batches(
        transform_batch,
        fn_kwargs={"spec": spec, "train": train},
        batch_format="numpy",
        batch_size=batch_size,
    )


SMALL_EVAL_BYTES = 256 * 2**20
"""An eval split whose transformed tensors fit in this is prepared on the driver in one go."""


def eval_dataset(
    shards_uri: str, split: str, spec: TransformSpec, manifest: Manifest
) -> ray.data.Dataset:
    """An evaluation split, transformed once (its transform is deterministic) instead of being
    decoded again by every worker in every epoch. A small split is decoded on the driver and
    handed to Ray as one Arrow table (about a second, where starting Ray Data's read and map
    tasks costs 10-15 s on a 2-core machine); a large one is materialised by Ray Data into the
    object store, never the driver's memory."""
    rows = manifest.split_rows(split)
    if rows * 3 * spec.image_size**2 * 4 <= SMALL_EVAL_BYTES:
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
    shards_uri: str, manifest: Manifest, train_spec: TransformSpec, eval_spec: TransformSpec
) -> dict[str, Any]:
    """Train: lazy, re-augmented every epoch. Val: transformed once (``eval_dataset``)."""
    configure_data_context()
    return {
        "train": split_dataset(shards_uri, "train", train_spec, train=True, manifest=manifest),
        "val": eval_dataset(shards_uri, "val", eval_spec, manifest),
    }
