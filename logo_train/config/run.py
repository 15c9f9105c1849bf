"""The ``tune.*`` and ``benchmark.*`` sections and ``Config``, the whole run: cross-section
checks, a backbone's own recipe, loading a YAML profile with overrides and writing it back."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from logo_train.config.data import DataConfig
from logo_train.config.fields import (
    check,
    coerce,
    from_dict,
    parse_override,
    set_dotted,
    set_fields,
)
from logo_train.config.training import (
    MODEL_RECIPE_FIELDS,
    RECIPE_FIELDS,
    AugmentConfig,
    ModelConfig,
    TrainConfig,
)
from logo_train.layout import RunLayout
from logo_train.storage import is_file, read_bytes

SearchKind = Literal["loguniform", "uniform", "int", "choice"]
SearchAlgorithm = Literal["tpe", "random"]
TuneScope = Literal["shared", "per_backbone"]
OnnxExporter = Literal["torchscript", "dynamo"]


@dataclass(kw_only=True)
class SearchParam:
    """One searched ``train.*`` field: a range (``low``..``high``) or a list of ``values``."""

    kind: SearchKind = "uniform"
    """'loguniform', 'uniform', 'int' (inclusive range) or 'choice' (one of ``values``)."""
    low: float = 0.0
    high: float = 1.0
    values: list[float] = field(default_factory=list)
    """'choice' only: the candidates."""


def _default_space() -> dict[str, SearchParam]:
    return {
        "penalty_weight": SearchParam(kind="loguniform", low=0.05, high=5.0),
        "class_weight_power": SearchParam(kind="uniform", low=0.0, high=1.0),
    }


# train.* fields a search may set (numbers that change the optimisation, not the plumbing)
SEARCHABLE = (
    "lr",
    "weight_decay",
    "warmup_fraction",
    "class_weight_power",
    "penalty_weight",
    "trust_warmup_epochs",
    "label_smoothing",
    "gce_q",
)


@dataclass(kw_only=True)
class TuneConfig:
    """Ray Tune + Optuna search of training parameters (``logo-train tune``, pipeline stage)."""

    enabled: bool = True
    """Run the search as a stage of ``logo-train run`` (before training)."""
    scope: TuneScope = "shared"
    """'shared': one search on ``proxy_backbone``, its best parameters train every backbone;
    'per_backbone': every backbone gets its own search."""
    proxy_backbone: str = ""
    """'shared' only: the backbone searched on; empty = the first of ``model.backbones``."""
    search: SearchAlgorithm = "tpe"
    """'tpe': Optuna's TPE sampler; 'random': Optuna's random sampler (the baseline)."""
    early_stopping: bool = True
    """ASHA stops trials whose val macro-F1 trails at a rung (time unit: epoch)."""
    num_samples: int = 12
    """Trials per search."""
    max_concurrent_trials: int = 1
    """Trials running at once; 0 = sized to the cluster's free CPUs/GPUs."""
    epochs: int = 0
    """Most epochs per trial (ASHA's max_t); 0 = ``train.epochs``."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: int = 3
    """ASHA: 1 in ``reduction_factor`` trials goes on at each rung."""
    trial_cpus: float = 0.0
    """CPUs reserved for each trial's driver function, which only waits on its Train workers
    (they take their own). 0 on small machines: Ray Data's read tasks need a whole free CPU."""
    trials_in_process: bool = True
    """A trial of one worker (``train.num_workers: 1``) trains in the trial's own process,
    with the worker's resources, reporting to Tune directly: no Ray Train worker group to start
    (~30 s a trial on 2 cores). False, or several workers: every trial is a Ray Train run."""
    seed: int = 0
    """Seed of the sampler: same seed, same suggestions for the same results."""
    space: dict[str, SearchParam] = field(default_factory=_default_space)
    """``train.*`` field -> range; fields: ``logo_train.config.run.SEARCHABLE``."""

    def __post_init__(self) -> None:
        p = "tune."
        check(self.num_samples >= 1, p + "num_samples", self.num_samples, ">= 1")
        check(
            self.max_concurrent_trials >= 0,
            p + "max_concurrent_trials",
            self.max_concurrent_trials,
            ">= 0 (0 = sized to the cluster)",
        )
        check(self.epochs >= 0, p + "epochs", self.epochs, ">= 0 (0 = train.epochs)")
        check(self.grace_period >= 1, p + "grace_period", self.grace_period, ">= 1")
        check(self.reduction_factor >= 2, p + "reduction_factor", self.reduction_factor, ">= 2")
        check(self.trial_cpus >= 0, p + "trial_cpus", self.trial_cpus, ">= 0")
        check(bool(self.space), p + "space", self.space, "at least one parameter")
        for key, param in self.space.items():
            name = f"{p}space.{key}"
            check(key in SEARCHABLE, name, key, f"one of {list(SEARCHABLE)}")
            if param.kind == "choice":
                check(bool(param.values), name + ".values", param.values, "a non-empty list")
                continue
            check(param.low < param.high, name + ".high", param.high, f"> low ({param.low})")
            if param.kind == "loguniform":
                check(param.low > 0, name + ".low", param.low, "> 0 (log scale)")


@dataclass(kw_only=True)
class BenchmarkConfig:
    """The final benchmark of every backbone's best checkpoint (``logo-train benchmark``)."""

    enabled: bool = True
    """Run the benchmark and the report as the last stages of ``logo-train run``."""
    split: str = "test"
    """Split the metrics are computed on."""
    latency_runs: int = 50
    """Timed batch-1 forward passes (after ``warmup_runs``) for the p50 / p95 latency."""
    warmup_runs: int = 10
    """Untimed passes first (allocator, caches, ONNX Runtime's graph optimisation)."""
    throughput_batch: int = 32
    """Batch size of the throughput measurement."""
    throughput_runs: int = 5
    """Timed batches of the throughput measurement."""
    onnx: bool = True
    """On CPU: also export to ONNX and time ONNX Runtime (outputs checked against PyTorch)."""
    onnx_exporter: OnnxExporter = "torchscript"
    """'torchscript' (torch.onnx's classic exporter, ~1 s per small model) or 'dynamo'
    (torch.export based, 10-20 s per model on 2 cores)."""
    onnx_tolerance: float = 1e-3
    """Largest absolute difference of logits allowed between ONNX Runtime and PyTorch."""
    open_set_keep: float = 0.95
    """The open-set threshold (the exported model's ``min_confidence``) keeps this share of
    the right answers on the shifted validation split (``open_set_shift``): below it an
    answer is ``unknown`` (``logo_train.calibration``)."""
    open_set_shift: float = 0.8
    """The threshold is fitted on the validation images seen through the training
    augmentation at this strength (``open_set_passes`` seeded passes): photos a model was not
    fitted on are less sure than its own validation split, and a threshold fitted there
    throws their right answers away (docs/predict.md). 0: the plain validation split."""
    open_set_passes: int = 3
    """Augmented passes over the validation split for the open-set fit."""
    open_set_max: float = 0.55
    """The fitted threshold never exceeds this (a near-perfect validation split would
    otherwise give ~1.0 and call most real photos ``unknown``)."""
    round_within_se: float = 1.0
    """The model a run hands over: the backbone with the best val macro-F1 and, of its rounds,
    the latest (the cleaning round's, trained on the labels its audit corrected) whose val
    macro-F1 is within this many standard errors of its best round's, sqrt(F (1 - F) / n) on
    the n validation images (``results.best_entry``). 0: the best round on validation."""
    num_cpus: float = 1.0
    """CPUs of the Ray task that measures (and torch / ONNX Runtime threads)."""
    num_gpus: float = 0.0
    """GPUs of that task: > 0 measures on the GPU, where the model would serve."""

    def __post_init__(self) -> None:
        p = "benchmark."
        check(self.split in ("train", "val", "test"), p + "split", self.split, "train|val|test")
        check(self.latency_runs >= 2, p + "latency_runs", self.latency_runs, ">= 2")
        check(self.warmup_runs >= 0, p + "warmup_runs", self.warmup_runs, ">= 0")
        check(self.throughput_batch >= 1, p + "throughput_batch", self.throughput_batch, ">= 1")
        check(self.throughput_runs >= 1, p + "throughput_runs", self.throughput_runs, ">= 1")
        check(self.onnx_tolerance > 0, p + "onnx_tolerance", self.onnx_tolerance, "> 0")
        check(0 < self.open_set_keep <= 1, p + "open_set_keep", self.open_set_keep, "0 < keep <= 1")
        check(0 <= self.open_set_shift <= 1, p + "open_set_shift", self.open_set_shift, "0..1")
        check(self.open_set_passes >= 1, p + "open_set_passes", self.open_set_passes, ">= 1")
        check(0 < self.open_set_max <= 1, p + "open_set_max", self.open_set_max, "0 < max <= 1")
        check(self.round_within_se >= 0, p + "round_within_se", self.round_within_se, ">= 0")
        check(self.num_cpus >= 1, p + "num_cpus", self.num_cpus, ">= 1")
        check(self.num_gpus >= 0, p + "num_gpus", self.num_gpus, ">= 0")


@dataclass(kw_only=True)
class TrackingConfig:
    """Experiment tracking in MLflow (``logo_train.tracking``): a run per backbone trained
    (params: its resolved config; metrics per epoch; the benchmark row; the report and the
    exported model as artifacts of the model handed over) and per Tune trial."""

    mlflow: bool = True
    """Track in MLflow; false = TensorBoard's event files only."""
    uri: str = ""
    """MLflow tracking URI; empty = a SQLite store in the run folder (``<run>/mlflow.db``,
    artifacts in ``<run>/mlartifacts``: ``mlflow ui --backend-store-uri
    sqlite:///<run>/mlflow.db``); or a team's server (``http://...``), any MLflow URI. A run
    stored in object storage (``output_dir`` s3://, gs://) needs one: training stops with
    this field named before any work."""
    experiment: str = ""
    """MLflow experiment; empty = the run's ``name``."""


def _check_recipes(recipes: dict[str, dict[str, Any]]) -> None:
    """``train.per_backbone``: registered backbones, recipe fields, values of their types."""
    if not recipes:
        return
    from logo_train.backbones import BACKBONES

    for backbone, overrides in recipes.items():
        name = f"train.per_backbone.{backbone}"
        check(backbone in BACKBONES, name, overrides, "a registered backbone's name")
        for key in overrides:
            check(
                key in RECIPE_FIELDS,
                f"{name}.{key}",
                overrides[key],
                f"a field of {list(RECIPE_FIELDS)}",
            )
            _check_recipe_value(f"{name}.{key}", key, overrides[key])


def _check_recipe_value(name: str, key: str, value: Any) -> None:
    """A ``train.per_backbone`` value of its field's type (a ``Literal`` field: one of its
    values), checked when the config loads, not first when that backbone trains."""
    hint = typing.get_type_hints(ModelConfig if key in MODEL_RECIPE_FIELDS else TrainConfig)[key]
    if hint is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # numbers load as floats here; ``for_backbone`` converts them so
    coerce(value, hint, name)


@dataclass(kw_only=True)
class Config:
    """A whole logo-train run."""

    name: str = "quick"
    """Run name; results go to ``<output_dir>/<name>``."""
    output_dir: str = "runs"
    """Root of all run folders (local path or s3://, gs:// URI)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check(bool(self.name) and "/" not in self.name, "name", self.name, "a non-empty name")
        _check_recipes(self.train.per_backbone)
        for backbone in self.train.clean.backbones:
            check(
                backbone in self.model.backbones,
                "train.clean.backbones",
                self.train.clean.backbones,
                f"names from model.backbones {self.model.backbones}",
            )
        proxy = self.tune.proxy_backbone
        if proxy:  # any registered backbone can stand in for the others
            from logo_train.backbones import BACKBONES

            check(
                proxy in BACKBONES,
                "tune.proxy_backbone",
                proxy,
                f"empty (= the first backbone) or a registered backbone {sorted(BACKBONES)}",
            )
        self._check_image_sizes()
        check(
            not self.tune.enabled or self.tune.epochs <= self.train.epochs,
            "tune.epochs",
            self.tune.epochs,
            f"<= train.epochs ({self.train.epochs})",
        )
        if self.tune.enabled and self.train.loss in ("trust_penalty", "gce"):  # warm-ups
            trial_epochs = self.tune.epochs or self.train.epochs
            searched = self.tune.space.get("trust_warmup_epochs")
            if searched is None:  # the warm-ups of the recipes the trials train
                recipes = self.train.per_backbone
                warmups = [
                    recipes.get(b, {}).get("trust_warmup_epochs", self.train.trust_warmup_epochs)
                    for b in self.searched_backbones()
                ]
                name, most = "tune.epochs", max(warmups)
            else:
                name = "tune.space.trust_warmup_epochs"
                most = max(searched.values) if searched.kind == "choice" else searched.high
            check(
                most < trial_epochs,
                name,
                self.tune.epochs if searched is None else most,
                f"trials of {trial_epochs} epochs > warm-up epochs of {self.train.loss} ({most:g})",
            )

        if self.data.synth.image_size == 0:  # rendered at the largest size any backbone takes
            self.data.synth.image_size = max(self.image_sizes().values())

    def _check_image_sizes(self) -> None:
        """Every backbone of the run (and the search's proxy) can take its input size; the
        error names the field that set it."""
        from logo_train.backbones import check_image_size

        for backbone, size in self.image_sizes().items():
            own = "image_size" in self.train.per_backbone.get(backbone, {})
            try:
                check_image_size(backbone, size)
            except ValueError as e:
                if not own:
                    raise
                field = f"train.per_backbone.{backbone}.image_size"
                raise ValueError(str(e).replace("model.image_size", field)) from None

    def searched_backbones(self) -> list[str]:
        """The backbones whose recipes the search's trials train: the proxy ('shared') or
        every backbone ('per_backbone')."""
        if self.tune.scope == "shared":
            return [self.tune.proxy_backbone or self.model.backbones[0]]
        return list(self.model.backbones)

    def image_sizes(self) -> dict[str, int]:
        """The input size of every backbone of the run (and of the search's proxy)."""
        names = [
            *self.model.backbones,
            *([self.tune.proxy_backbone] * bool(self.tune.proxy_backbone)),
        ]
        return {
            b: int(
                round(self.train.per_backbone.get(b, {}).get("image_size", self.model.image_size))
            )
            for b in names
        }

    def with_train(self, **fields: Any) -> Config:
        """This config with ``train.<field>`` set for each keyword, validated like a loaded
        config: the one way every caller (a backbone's recipe, a Tune trial's sampled
        parameters, a cleaning round's loss, the studies) sets training fields. A number is
        coerced to the field's type (a sampled 31.6 for ``batch_size`` is 32)."""
        data = config_to_dict(self)
        set_fields(data, "train", fields)
        return config_from_dict(data)

    def for_backbone(self, backbone: str) -> Config:
        """This config with ``train.per_backbone[backbone]`` applied (validated)."""
        overrides = self.train.per_backbone.get(backbone)
        if not overrides:
            return self
        data = config_to_dict(self)
        recipes = data["train"]["per_backbone"]
        if "image_size" in overrides:  # the others keep theirs: model.image_size becomes this one's
            for other, size in self.image_sizes().items():
                recipes.setdefault(other, {}).setdefault("image_size", size)
        if "trust_warmup_epochs" in overrides:  # the same for the search's check of warm-ups
            for other in self.searched_backbones():
                recipes.setdefault(other, {}).setdefault(
                    "trust_warmup_epochs", self.train.trust_warmup_epochs
                )
        for key, value in overrides.items():  # the same coercion as with_train
            set_fields(data, "model" if key in MODEL_RECIPE_FIELDS else "train", {key: value})
        try:
            return config_from_dict(data)
        except ValueError as e:
            raise ValueError(f"train.per_backbone.{backbone}: {e}") from None

    @property
    def run_dir(self) -> str:
        return f"{self.output_dir.rstrip('/')}/{self.name}"

    @property
    def layout(self) -> RunLayout:
        """The paths under ``run_dir`` (``logo_train.layout``)."""
        return RunLayout(self.run_dir)

    @property
    def shards_uri(self) -> str:
        return self.data.shards_uri or self.layout.data


def config_from_dict(data: dict[str, Any]) -> Config:
    return from_dict(Config, data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML profile (or the defaults; a local path or a URI such as a run folder's
    ``s3://…/config.yaml``), apply ``KEY=VALUE`` overrides, validate."""

    data: dict[str, Any] = {}
    if path is not None:
        path = str(path)
        if not is_file(path):
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(read_bytes(path).decode())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config file {path}: top level must be a mapping")
        data = loaded or {}
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return config_from_dict(data)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
