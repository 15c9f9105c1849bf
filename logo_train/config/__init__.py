"""Typed configuration: nested ``@dataclass(kw_only=True)`` sections, loaded from YAML plus
dotted ``KEY=VALUE`` overrides.

Every field is validated in ``__post_init__``; errors name the dotted field and the bad value,
so a typo in a profile fails before any work starts. Validation reads the backbone table
(``logo_train.backbones``, plain data): reading a config imports neither torch nor timm.

* ``fields``: dicts to dataclasses, the type checks, overrides;
* ``data``: ``data.*`` (the embedded dataset, ingest);
* ``training``: ``model.*``, ``augment.*``, ``train.*`` (``train.clean``), the recipe fields;
* ``run``: ``tune.*``, ``benchmark.*``, ``tracking.*``, ``Config``, ``load_config`` /
  ``dump_config``;
* ``serve``: ``logo-train serve``'s options (not part of a run).
"""

from logo_train.config.data import DataConfig, IngestConfig, SynthConfig
from logo_train.config.fields import parse_override, set_dotted
from logo_train.config.run import (
    BenchmarkConfig,
    Config,
    SearchParam,
    TrackingConfig,
    TuneConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)
from logo_train.config.serve import ServeOptions
from logo_train.config.training import (
    PRECISIONS,
    AugmentConfig,
    CleanConfig,
    LossName,
    ModelConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "BenchmarkConfig",
    "CleanConfig",
    "Config",
    "DataConfig",
    "IngestConfig",
    "LossName",
    "ModelConfig",
    "PRECISIONS",
    "SearchParam",
    "ServeOptions",
    "SynthConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_override",
    "set_dotted",
]
