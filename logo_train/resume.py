"""A run that survives its driver: the same command again continues the run in its folder.

``logo-train run`` keeps what each stage finished and redoes what it did not (checked from the
files, not assumed; each owner decides in its own terms): the data stage reuses shards with the
same parameters (a folder left ``.incomplete`` by a killed writer is written again); a search
that ended is kept, an interrupted one restored by Tune; the train stage's Ray Train runs have
stable names, so finished backbones are kept and the interrupted one resumes from its last
checkpoint; an audit of the same checkpoint, a cleaning round's shards, model and audit, and a
benchmark of the same checkpoints are kept. The report is written again (seconds).

This module decides whether a run folder may be continued (``check_config``: the config must
be the one the run was started with, else ``ConfigChanged`` names the fields), starts over
on request (``start_fresh``) and says, in the run's first line, what is resumed and from where
(``describe``).
"""

from __future__ import annotations

import yaml

from logo_train.config import Config, config_from_dict, config_to_dict
from logo_train.stages import TABLE, selected
from logo_train.storage import exists, read_bytes, remove

RESUME_SAFE = frozenset({"output_dir", "train.max_failures", "data.workers"})
"""Fields that may differ between a run and its continuation: where the folder is (already the
same), how often a failed worker group is retried, how many processes render the shards. They
change no result."""


class ConfigChanged(ValueError):
    """A run folder started with another config: continuing would mix two experiments."""


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in ("pretrained", "per_backbone"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(before: Config, now: Config) -> list[str]:
    """``field: before -> now`` for every field (dotted) that differs, except ``RESUME_SAFE``."""
    old, new = _flat(config_to_dict(before)), _flat(config_to_dict(now))
    keys = sorted((set(old) | set(new)) - RESUME_SAFE)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def started_config(cfg: Config) -> Config | None:
    """The config a run in ``cfg.run_dir`` was started with (its ``config.yaml``), if any."""
    if not exists(cfg.layout.config):
        return None
    return config_from_dict(yaml.safe_load(read_bytes(cfg.layout.config).decode()) or {})


def _outputs(cfg: Config, stages: tuple[str, ...]) -> list[str]:
    """The folders of ``stages`` (the stage table's ``writes``) that exist in the run folder."""
    folders = [u for s in TABLE if s.name in stages for u in s.writes(cfg.layout)]
    return [u for u in dict.fromkeys(folders) if exists(u)]


def check_config(cfg: Config, stages: tuple[str, ...]) -> None:
    """Refuse to continue a stage of a run folder with another config than the one it was
    started with, naming the fields. Stages with no outputs there yet do not count: ``logo-train
    tune`` and then ``logo-train train --config <its best_config.yaml>`` share a folder."""
    before = started_config(cfg)
    if before is None or not _outputs(cfg, stages):
        return
    differ = config_differences(before, cfg)
    if differ:
        shown = "; ".join(differ[:8]) + (f"; and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ConfigChanged(
            f"{cfg.run_dir} holds a run started with another config ({cfg.layout.config}): "
            f"{shown}. Run the same config to continue it, pass --fresh to start over in this "
            "folder, or set another name / output_dir"
        )


def start_fresh(cfg: Config, stages: tuple[str, ...], echo=print) -> None:
    """``--fresh``: delete what ``stages`` wrote in the run folder before (not the shards: they
    are reused only when their parameters match)."""
    removed = _outputs(cfg, stages)
    for uri in removed:
        remove(uri)
    if removed:
        echo(f"[run] --fresh: removed {', '.join(removed)}")


def describe(cfg: Config, stages: tuple[str, ...]) -> str:
    """The run's first line: a new run, or what a continued one keeps and where it goes on
    (each stage's ``how_far``, from the stage table)."""
    checked = bool(_outputs(cfg, stages))  # check_config compared the config
    if not checked and not _has_data(cfg):
        return f"[run] {cfg.run_dir}: a new run"
    parts = [step.how_far(cfg) for step in selected(cfg, stages)]  # the stages that run
    same = " (same config)" if checked else ""
    return f"[resume] {cfg.run_dir}{same}: " + "; ".join(parts)


def _has_data(cfg: Config) -> bool:
    """Shards in the run's data location, finished or half-written."""
    data = next(s for s in TABLE if s.name == "data")
    return data.how_far(cfg) != "data: to do"
