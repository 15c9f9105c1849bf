"""The data stage of a run: make sure shards exist for ``cfg.data.source`` and say what they hold.

``source: synth`` renders the embedded dataset, a folder with ``manifest.json`` is used as it is,
any other folder is ingested as an ImageFolder tree. Shards written by an earlier run with the
same parameters are reused.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from logo_train.config import Config
from logo_train.data import ingest, synth
from logo_train.data.preview import CONTACT_SHEET, contact_sheet
from logo_train.data.shards import MANIFEST, Manifest, is_incomplete, read_manifest
from logo_train.storage import exists, join

log = logging.getLogger(__name__)


def _is_shards(uri: str) -> bool:
    """A complete shards folder: its manifest written, no ``.incomplete`` mark left."""
    return exists(join(uri, MANIFEST)) and not is_incomplete(uri)


def _reusable(uri: str, source: str, params: dict, overwrite: bool) -> bool:
    """True when ``uri`` already holds shards of this source with these parameters.

    Shards of the same source with other parameters are replaced; shards of another source are
    only replaced with ``overwrite`` (they may be a user's only copy).
    """
    if not _is_shards(uri):
        return False
    old = read_manifest(uri)
    if old.source != source and not overwrite:
        raise FileExistsError(
            f"{uri} holds shards of another source ({old.source}); set data.shards_uri to "
            "another folder or pass --overwrite"
        )
    return (
        not overwrite and old.source == source and {k: old.params.get(k) for k in params} == params
    )


def shards_location(cfg: Config) -> str:
    """Where the run's shards are: ``data.source`` when it is a shards folder, else the run's."""
    source = cfg.data.source
    return source if source != "synth" and _is_shards(source) else cfg.shards_uri


def existing_data(cfg: Config) -> tuple[str, Manifest]:
    """The run's shards as they are, for a run without the data stage. Refuses (naming the
    fields) when they were made with other data parameters than ``cfg`` has: checkpoints
    trained on them would otherwise be scored on a different test split."""
    uri = shards_location(cfg)
    if not _is_shards(uri):
        raise FileNotFoundError(f"no shards at {uri}: run the data stage first (--stages data,...)")
    manifest = read_manifest(uri)
    if cfg.data.source == "synth" or uri == cfg.shards_uri:
        section, ours = (
            ("synth", asdict(cfg.data.synth))
            if cfg.data.source == "synth"
            else ("ingest", asdict(cfg.data.ingest))
        )
        differ = {
            k: (manifest.params.get(k), v) for k, v in ours.items() if manifest.params.get(k) != v
        }
        if differ:
            fields = ", ".join(
                f"data.{section}.{k} is {new!r} here, {old!r} in the shards"
                for k, (old, new) in differ.items()
            )
            raise ValueError(
                f"the shards at {uri} do not match the config ({fields}): add the data stage "
                "(--stages data,...) to re-make them, or set the fields back"
            )
    return uri, manifest


def prepare_data(
    cfg: Config, *, overwrite: bool = False, progress: bool = True
) -> tuple[str, Manifest, bool]:
    """Return ``(shards_uri, manifest, reused)`` for the run's data source."""
    data = cfg.data
    if data.source != "synth" and _is_shards(data.source):
        log.info("using existing shards at %s", data.source)
        return data.source, read_manifest(data.source), True

    uri = cfg.shards_uri
    if data.source == "synth":
        source, params = "synth", synth.manifest_params(data.synth)
    else:
        root = Path(data.source)
        if not root.is_dir():
            raise FileNotFoundError(
                f"data.source {data.source!r} is neither 'synth', a shards folder with "
                f"{MANIFEST}, nor an ImageFolder directory"
            )
        source, params = (
            str(root.resolve()),
            {"ingest": "logo_train.data.ingest", **asdict(data.ingest)},
        )
    if _reusable(uri, source, params, overwrite):
        log.debug("reusing shards at %s (same parameters)", uri)
        manifest = read_manifest(uri)
        if not exists(join(uri, CONTACT_SHEET)):  # a writer killed after the manifest
            contact_sheet(uri, manifest)
        return uri, manifest, True

    common = {"rows_per_shard": data.rows_per_shard, "workers": data.workers, "progress": progress}
    if data.source == "synth":
        manifest = synth.generate(data.synth, uri, overwrite=True, **common)
    else:
        manifest = ingest.ingest(data.source, uri, data.ingest, overwrite=True, **common)
    contact_sheet(uri, manifest)
    return uri, manifest, False
