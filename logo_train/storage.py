"""The storage floor: paths and URIs (a local path, or s3://, gs://, file:// through pyarrow's
filesystems), read, write, JSON, folder copies. Everything that touches a run's files goes
through here; this module imports nothing of the package, so every other module may import it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and a path inside it, for a local path or an s3://, gs://, file:// URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def absolute(uri: str) -> str:
    """A URI as it is, a local path made absolute (what Ray Train's ``storage_path`` takes)."""
    return uri if "://" in uri else os.path.abspath(uri)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def parent(uri: str) -> str:
    """The folder holding ``uri`` (a local path or a URI)."""
    if "://" not in uri:
        return os.path.dirname(os.path.abspath(uri))
    return uri.rstrip("/").rsplit("/", 1)[0]


def make_dir(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def remove(uri: str) -> bool:
    """Delete the file or folder (with what it holds) at ``uri``; False when there was none."""
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)
    return kind != pafs.FileType.NotFound


def list_names(uri: str) -> list[str]:
    """The names in the folder ``uri`` (files and folders, not recursive); [] when absent."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_json(uri: str | Path, data: Any, *, default=None) -> str:
    """``data`` as indented JSON at ``uri`` (its folder made); ``default`` as ``json.dumps``
    takes it (e.g. ``float`` for numpy numbers). Returns the URI."""
    uri = str(uri)
    write_bytes(uri, json.dumps(data, indent=2, default=default).encode())
    return uri


def read_json(uri: str | Path) -> Any:
    return json.loads(read_bytes(str(uri)))


def copy_dir(local: str | Path, uri: str) -> None:
    """Every file of the local folder ``local`` (not its sub-folders) to the folder ``uri``:
    what a worker or the driver wrote to a temporary folder, to the run's storage."""
    for name in sorted(os.listdir(local)):
        source = os.path.join(local, name)
        if os.path.isfile(source):
            with open(source, "rb") as f:
                write_bytes(join(uri, name), f.read())


def download_dir(uri: str, local: str | Path) -> Path:
    """Every file of the folder ``uri`` (not its sub-folders) into the local folder ``local``:
    what a model folder on s3:// or gs:// holds, for a library that reads local files."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: no such folder")
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                (local / info.base_name).write_bytes(f.read())
    return local
