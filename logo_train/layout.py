"""Every path under a run folder, named once. A run folder (``<output_dir>/<name>``, a local
path or a URI) holds::

    config.yaml                  the resolved config the run was made with
    run.lock                     the driver running now (logo_train.runlock)
    data/                        the shards (unless data.shards_uri puts them elsewhere)
    tune/<backbone>-<hash>/      one Tune experiment per search (tune.py)
    train/summary.json           every trained backbone, its best checkpoint, where time went
    train/<ray run>/<backbone>/  best/ (the best checkpoint), history.json, result.json;
                                 <ray run>: run, or run-<size>px per input size (stable:
                                 a resumed run finds it)
    tensorboard/<ray run>/<backbone>/, tensorboard/<backbone>-round<r>/
    audit/<backbone>/            suspected_labels.parquet/.png, audit_summary.json (audit.py)
    clean/<backbone>/round<r>/   data/, train/, audit/, cleaning.parquet (clean.py)
    clean/summary.json           the cleaning rounds' models and the rounds refused
    report/                      benchmark.json, benchmark.md, plots, model/ (report.py)

File names inside a stage's own folder (``suspected_labels.parquet``, ``best/``) belong to the
module that writes them; the folders above are named here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from logo_train.storage import join

CONFIG_YAML = "config.yaml"
REPORT_DIR = "report"
BENCHMARK_JSON = "benchmark.json"
MODEL_DIR = "model"
SUMMARY_JSON = "summary.json"
CLEANING_PARQUET = "cleaning.parquet"
"""A cleaning round's table (``clean/<backbone>/round<r>/``): every row's rank and action."""
CLEANING_JSON = "cleaning.json"
LOCK = "run.lock"


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run folder ``root``."""

    root: str

    @property
    def config(self) -> str:
        return join(self.root, CONFIG_YAML)

    @property
    def lock(self) -> str:
        """``run.lock``: the driver that holds the run folder (``logo_train.runlock``)."""
        return join(self.root, LOCK)

    @property
    def data(self) -> str:
        return join(self.root, "data")

    @property
    def tune(self) -> str:
        return join(self.root, "tune")

    @property
    def train(self) -> str:
        return join(self.root, "train")

    @property
    def train_summary(self) -> str:
        return join(self.train, SUMMARY_JSON)

    @property
    def tensorboard(self) -> str:
        return join(self.root, "tensorboard")

    def tensorboard_of(self, name: str) -> str:
        """``tensorboard/<name>``: a Ray Train run's (``<run>/<backbone>``) or a round's."""
        return join(self.tensorboard, name)

    def audit(self, backbone: str, round: int = 1) -> str:
        """A model's audit: ``audit/<backbone>`` (round 1) or its cleaning round's ``audit/``."""
        return join(self.audits, backbone) if round <= 1 else self.round_audit(backbone, round)

    def clean_round(self, backbone: str, round: int) -> str:
        return join(self.cleaning, f"{backbone}/round{round}")

    def round_data(self, backbone: str, round: int) -> str:
        return join(self.clean_round(backbone, round), "data")

    def round_train(self, backbone: str, round: int) -> str:
        return join(self.clean_round(backbone, round), "train")

    def round_audit(self, backbone: str, round: int) -> str:
        return join(self.clean_round(backbone, round), "audit")

    @property
    def clean_summary(self) -> str:
        return join(self.cleaning, SUMMARY_JSON)

    @property
    def report(self) -> str:
        return join(self.root, REPORT_DIR)

    @property
    def benchmark_json(self) -> str:
        return join(self.report, BENCHMARK_JSON)

    @property
    def audits(self) -> str:
        """``audit/``: every model's audit (round 1's; a cleaning round keeps its own)."""
        return join(self.root, "audit")

    @property
    def cleaning(self) -> str:
        """``clean/``: the cleaning rounds."""
        return join(self.root, "clean")

    @property
    def model(self) -> str:
        """``report/model``: the exported best model (ONNX + model.json)."""
        return join(self.report, MODEL_DIR)
