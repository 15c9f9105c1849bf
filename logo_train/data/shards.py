"""Parquet shards: one row per image, written to a local path or any pyarrow filesystem URI.

Layout of a shards folder::

    manifest.json            classes, counts per class and split, parameters, rejected inputs
    train-00000.parquet ...  rows of the train split, in shuffled order
    val-00000.parquet ...
    test-00000.parquet ...
    contact_sheet.png        a few samples per class (written by ``preview``)
    .incomplete              while the folder is being written (``prepare_output`` puts it,
                             ``write_manifest`` removes it): a killed writer leaves it, and the
                             next ``prepare_output`` removes the shards it had written
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from logo_train.storage import exists, join, read_bytes, resolve, write_bytes

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
INCOMPLETE = ".incomplete"
_OURS = {INCOMPLETE, MANIFEST, "contact_sheet.png"}
SHARD_FILE = re.compile(r"^(train|val|test)-\d{5}\.parquet$")
FORMAT_VERSION = 1

BASE_FIELDS = [
    pa.field("image", pa.binary(), nullable=False),
    pa.field("label", pa.int32(), nullable=False),
    pa.field("label_name", pa.string(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("source_path", pa.string(), nullable=False),
]
TRUTH_FIELDS = [
    pa.field("clean_label", pa.int32(), nullable=False),
    pa.field("is_noisy", pa.bool_(), nullable=False),
]


def shard_schema(with_truth: bool) -> pa.Schema:
    """Schema of the rows; ``with_truth`` adds ``clean_label``/``is_noisy`` (embedded data only)."""
    return pa.schema(BASE_FIELDS + (TRUTH_FIELDS if with_truth else []))


def prepare_output(uri: str, overwrite: bool) -> None:
    """Create the folder, marked ``.incomplete`` until ``write_manifest``; refuse to mix with an
    earlier dataset unless ``overwrite``.

    Only what this project wrote is ever deleted: the files an earlier manifest lists, or, in a
    folder a killed writer left ``.incomplete``, its shard files (``<split>-NNNNN.parquet``)
    and the contact sheet. A non-empty folder with neither is refused, whatever ``overwrite``
    says: its files are not ours to delete."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise FileExistsError(f"shards output {uri} is a file, expected a folder")
    if info.type == pafs.FileType.Directory:
        present = fs.get_file_info(pafs.FileSelector(path))
        if present and exists(join(uri, INCOMPLETE)):
            _remove_half_written(uri, present)
        elif present and not exists(join(uri, MANIFEST)):
            raise FileExistsError(
                f"{uri} is not empty ({len(present)} entries) and has no {MANIFEST}: not a "
                "logo-train shards folder, so nothing in it is deleted; choose an empty or new "
                "folder"
            )
        elif present:
            old = read_manifest(uri)
            listed = [name for names in old.files.values() for name in names] + [MANIFEST]
            if not overwrite:
                raise FileExistsError(
                    f"{uri} already holds a dataset ({len(listed) - 1} shard files); "
                    "pass --overwrite to replace it or choose another folder"
                )
            for name in listed:
                target = resolve(join(uri, name))[1]
                if fs.get_file_info(target).type == pafs.FileType.File:
                    fs.delete_file(target)
    fs.create_dir(path, recursive=True)
    write_bytes(join(uri, INCOMPLETE), b"shards being written; removed with manifest.json\n")


def is_incomplete(uri: str) -> bool:
    """True when ``uri`` is a shards folder whose writer stopped before its manifest."""
    return exists(join(uri, INCOMPLETE))


def _remove_half_written(uri: str, present: list) -> None:
    """The shards a killed writer left (it never wrote the manifest); anything else in the
    folder stops the removal, naming it."""
    ours = [f for f in present if SHARD_FILE.match(f.base_name) or f.base_name in _OURS]
    foreign = [f.base_name for f in present if f not in ours]
    if foreign:
        raise FileExistsError(
            f"{uri} was left half-written ({INCOMPLETE}) but also holds {sorted(foreign)[:5]}, "
            "which logo-train did not write: nothing is deleted; move them or choose another "
            "folder"
        )
    fs = resolve(uri)[0]
    shards = [f for f in ours if f.base_name != INCOMPLETE]
    log.warning("%s: removing %d file(s) of an interrupted write", uri, len(shards))
    for f in shards:
        fs.delete_file(f.path)


def write_shard(uri: str, table: pa.Table) -> None:
    """One shard file: images stored as they are (already compressed), the metadata zstd."""
    fs, path = resolve(uri)
    pq.write_table(
        table,
        path,
        filesystem=fs,
        compression={name: ("none" if name == "image" else "zstd") for name in table.column_names},
    )


class ShardWriter:
    """Buffers rows of one split and writes ``<split>-NNNNN.parquet`` every ``rows_per_shard``."""

    def __init__(self, uri: str, split: str, schema: pa.Schema, rows_per_shard: int):
        self.uri, self.split, self.schema = uri, split, schema
        self.rows_per_shard = rows_per_shard
        self._rows: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.rows_written = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        name = f"{self.split}-{len(self.files):05d}.parquet"
        write_shard(join(self.uri, name), pa.Table.from_pylist(self._rows, schema=self.schema))
        self.files.append(name)
        self.rows_written += len(self._rows)
        self._rows = []


@dataclass
class Manifest:
    """What a shards folder holds and how it was made. Written as ``manifest.json``."""

    source: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    """split -> class name -> rows."""
    files: dict[str, list[str]]
    """split -> shard file names."""
    params: dict[str, Any]
    has_truth: bool
    noisy_counts: dict[str, int] = field(default_factory=dict)
    """split -> rows whose given label differs from the true one (embedded data only)."""
    clean_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> class name -> rows by true label (embedded data only)."""
    files_seen: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)
    """Every input that did not become a row: path, split, class, reason code, detail."""
    skipped_classes: list[dict[str, str]] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def rows(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def split_rows(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    def imbalance_ratio(self, split: str = "train", truth: bool = False) -> float:
        """Largest / smallest class count (by given labels, or by true ones with ``truth``)."""
        table = self.clean_counts if truth else self.counts
        counts = [c for c in table.get(split, {}).values() if c > 0]
        return max(counts) / min(counts) if counts else float("nan")

    def noise_rate(self, split: str = "train") -> float | None:
        if not self.has_truth or not self.split_rows(split):
            return None
        return self.noisy_counts.get(split, 0) / self.split_rows(split)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(**data)


def write_manifest(uri: str, manifest: Manifest) -> None:
    """The manifest, written last: the folder is complete (its ``.incomplete`` mark goes)."""
    write_bytes(join(uri, MANIFEST), manifest.to_json().encode())
    if exists(join(uri, INCOMPLETE)):
        fs, path = resolve(join(uri, INCOMPLETE))
        fs.delete_file(path)


def read_manifest(uri: str) -> Manifest:
    path = join(uri, MANIFEST)
    if not exists(path):
        raise FileNotFoundError(f"no {MANIFEST} in {uri}: not a logo-train shards folder")
    try:
        return Manifest.from_json(read_bytes(path).decode())
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a valid manifest: {e}") from e


def shard_uris(uri: str, split: str, manifest: Manifest | None = None) -> list[str]:
    manifest = manifest or read_manifest(uri)
    return [join(uri, name) for name in manifest.files.get(split, [])]


def iter_batches(
    uri: str, split: str, columns: list[str] | None = None, batch_size: int = 256
) -> Iterator[pa.RecordBatch]:
    """Stream one split's rows without loading the whole split."""
    for shard in shard_uris(uri, split):
        fs, path = resolve(shard)
        with fs.open_input_file(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def read_split(uri: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """A whole split as one table (for small data: tests, audits of a few thousand rows)."""
    batches = list(iter_batches(uri, split, columns))
    if not batches:
        return pa.table({name: [] for name in columns or []})
    return pa.Table.from_batches(batches)


def write_splits(
    uri: str,
    rows: Iterable[dict[str, Any]],
    *,
    with_truth: bool,
    rows_per_shard: int,
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Write rows (any order of splits) through one writer per split; return files and counts."""
    schema = shard_schema(with_truth)
    writers = {s: ShardWriter(uri, s, schema, rows_per_shard) for s in SPLITS}
    for row in rows:
        writers[row["split"]].add(row)
    for w in writers.values():
        w.flush()
    return {s: w.files for s, w in writers.items()}, {s: w.rows_written for s, w in writers.items()}
