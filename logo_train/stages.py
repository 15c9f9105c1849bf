"""The pipeline's stages as one table: each entry says what the stage does, which stages it
needs beside it, when a run includes it, what it writes under the run folder, the function that
runs it and the one that says how far it got. ``pipeline.run`` walks the table, ``resume``
asks it (what to check, delete, describe), the CLI's ``--stages`` lists it. Adding a stage is
one entry here, a body and a state function (``module:function``, resolved when called: this
module imports no stage, so the CLI and ``resume`` stay light).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for the annotations: importing config here would close a cycle
    from logo_train.config import Config
    from logo_train.layout import RunLayout


def _always(cfg: Config, stages: tuple[str, ...]) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    does: str
    """One line: what the stage does (``--stages``' help, the docs)."""
    body: str
    """``module:function`` running it: ``(cfg, run: pipeline.RunResult) -> bool`` (False: the
    run stops after it, e.g. an interrupted search)."""
    state: str
    """``module:function`` saying how far it got in a run folder, for the run's first line:
    ``(cfg) -> str`` such as ``"train: done"``."""
    writes: Callable[[RunLayout], list[str]]
    """The folders it writes (``--fresh`` deletes them; a config change there is refused)."""
    needs: tuple[str, ...] = ()
    """Stages that must run with it when it runs (it reads their new outputs)."""
    included: Callable[[Config, tuple[str, ...]], bool] = _always
    """Whether a run of ``stages`` with this config runs it (its switch in the config)."""

    def run(self, cfg: Config, result: Any) -> bool:
        return _resolve(self.body)(cfg, result) is not False

    def how_far(self, cfg: Config) -> str:
        return _resolve(self.state)(cfg)


def _resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


TABLE: tuple[Stage, ...] = (
    Stage(
        "data",
        "render the embedded dataset, or ingest --data, to Parquet shards",
        "logo_train.pipeline:data_body",
        "logo_train.pipeline:data_state",
        writes=lambda layout: [],  # shards are kept or re-made by their own parameters
    ),
    Stage(
        "tune",
        "search training parameters (Ray Tune + Optuna; tune.enabled)",
        "logo_train.pipeline:tune_body",
        "logo_train.pipeline:tune_state",
        writes=lambda layout: [layout.tune],
        included=lambda cfg, stages: cfg.tune.enabled or stages == ("data", "tune"),
    ),
    Stage(
        "train",
        "train every backbone (Ray Data + Ray Train, a worker group per input size)",
        "logo_train.pipeline:train_body",
        "logo_train.pipeline:train_state",
        writes=lambda layout: [layout.train, layout.tensorboard],
    ),
    Stage(
        "audit",
        "rank every training label by how wrong it looks",
        "logo_train.pipeline:audit_body",
        "logo_train.pipeline:audit_state",
        writes=lambda layout: [layout.audits],
        needs=("train",),
    ),
    Stage(
        "clean",
        "relabel or drop the suspected labels, train again (train.clean.mode)",
        "logo_train.pipeline:clean_body",
        "logo_train.pipeline:clean_state",
        writes=lambda layout: [layout.cleaning],
        needs=("audit",),
        included=lambda cfg, stages: cfg.train.clean.enabled,
    ),
    Stage(
        "benchmark",
        "every model on the test split: metrics, cost, speed (benchmark.enabled)",
        "logo_train.pipeline:benchmark_body",
        "logo_train.pipeline:benchmark_state",
        writes=lambda layout: [layout.report],
        included=lambda cfg, stages: cfg.benchmark.enabled,
    ),
    Stage(
        "report",
        "benchmark.md, the plots and the best model exported",
        "logo_train.pipeline:report_body",
        "logo_train.pipeline:report_state",
        writes=lambda layout: [layout.report],
        included=lambda cfg, stages: cfg.benchmark.enabled,
    ),
)

STAGES = tuple(s.name for s in TABLE)
"""The stage names in pipeline order (``logo-train run --stages``)."""


def check_stages(cfg: Config, stages: tuple[str, ...]) -> None:
    """Known stage names, and each stage a run includes with the ones it needs."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    for stage in selected(cfg, stages):
        missing = [n for n in stage.needs if n not in stages]
        if missing:
            raise ValueError(
                f"stage '{stage.name}' needs stage '{missing[0]}' (it reads its new outputs)"
            )


def selected(cfg: Config, stages: tuple[str, ...]) -> list[Stage]:
    """The stages of ``stages`` this config runs, in pipeline order."""
    return [s for s in TABLE if s.name in stages and s.included(cfg, stages)]
