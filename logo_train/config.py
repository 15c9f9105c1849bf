"""Typed configuration: nested dataclasses, loaded from YAML plus dotted CLI overrides.

Every field is validated in ``__post_init__``; errors name the dotted field and the bad value,
so a typo in a profile fails before any work starts. The backbone registry
(``logo_train.models``, which loads torch and timm) is imported inside the checks that need it,
so reading a config stays light for the command line and the job entrypoints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from logo_train.layout import RunLayout
from logo_train.storage import is_file, read_bytes

NoiseKind = Literal["symmetric", "pairs"]
ImageFormat = Literal["png", "jpeg"]
Layout = Literal["auto", "splits", "single"]
LossName = Literal["ce", "ce_weighted", "trust_penalty", "gce"]
OptimizerName = Literal["adamw", "adam", "sgd"]
SearchKind = Literal["loguniform", "uniform", "int", "choice"]
SearchAlgorithm = Literal["tpe", "random"]
TuneScope = Literal["shared", "per_backbone"]
OnnxExporter = Literal["torchscript", "dynamo"]
CleanMode = Literal["none", "drop", "relabel"]
CleanLoss = Literal["", "auto", LossName]  # nested Literals flatten
"""The cleaned rounds' loss: one of ``LossName``, empty for the backbone's own, or 'auto'."""


def _check(cond: bool, name: str, value: Any, expected: str) -> None:
    if not cond:
        raise ValueError(f"config field '{name}' = {value!r}: expected {expected}")


@dataclass(kw_only=True)
class SynthConfig:
    """The embedded dataset: real brand SVGs composited as badge photos."""

    image_size: int = 64
    """Height of the images written to the shards, in pixels (square crops are this wide;
    wide badges' crops up to ``max_aspect`` times wider). 0 = the largest input size of the
    run's backbones (``model.image_size`` and ``train.per_backbone.*.image_size``): rendered
    once at that size, every backbone's transforms resize to its own."""
    images_per_class: int = 200
    """Training images of the most frequent (head) class."""
    imbalance_ratio: float = 10.0
    """Head count / tail count of the training split (1 = balanced); counts decay exponentially."""
    val_per_class: int = 30
    """Validation images per class (balanced)."""
    test_per_class: int = 50
    """Test images per class (balanced, always clean)."""
    noise_rate: float = 0.2
    """Fraction of training labels replaced by a wrong one (exact count, seeded)."""
    noise_kind: NoiseKind = "symmetric"
    """'symmetric': any other class; 'pairs': the look-alike partner brand."""
    noisy_val: bool = False
    """Apply the same label noise to the validation split (as in real life)."""
    difficulty: float = 0.5
    """Strength of geometric and photometric variation, 0 (clean renders) to 1 (hard)."""
    min_crop_px: int = 30
    """Smallest native crop height before resizing to ``image_size`` (badge crops are small)."""
    max_crop_px: int = 90
    """Largest native crop height before resizing to ``image_size``."""
    max_aspect: float = 2.0
    """Widest crop, width / height: a detector's crop of a wide badge (Ford's oval, Kia's
    wordmark) is wider than tall; 1 = every crop square."""
    studio: float = 0.15
    """Share of crops on a white or light background (clean artwork, product shots), whatever
    the difficulty: a kind of photo many real sets hold."""
    surveillance: float = 0.3
    """Share of crops, times ``difficulty``, seen by a surveillance camera: grey, the badge
    12-28 px tall, soft, sometimes glare (0.15 at difficulty 0.5)."""
    classic_badges: bool = True
    """Draw the badges most cars still wear where simple-icons has the newer design (Citroen's
    chevrons without the oval, Renault's 1992 lozenge), beside the current one."""
    unknown_vehicles: bool = True
    """The ``unknown`` class also holds other makers' badges (19), not only non-vehicle icons."""
    image_format: ImageFormat = "png"
    """Encoding of the stored images."""
    seed: int = 0
    """Seed of everything random in the generator: same seed, same bytes."""

    def __post_init__(self) -> None:
        p = "data.synth."
        _check(
            self.image_size == 0 or 8 <= self.image_size <= 1024,
            p + "image_size",
            self.image_size,
            "8..1024, or 0 (the largest input size of the run's backbones)",
        )
        _check(self.images_per_class >= 1, p + "images_per_class", self.images_per_class, ">= 1")
        _check(
            1.0 <= self.imbalance_ratio <= self.images_per_class,
            p + "imbalance_ratio",
            self.imbalance_ratio,
            f"1..images_per_class ({self.images_per_class}) so every class keeps >= 1 image",
        )
        _check(self.val_per_class >= 0, p + "val_per_class", self.val_per_class, ">= 0")
        _check(self.test_per_class >= 0, p + "test_per_class", self.test_per_class, ">= 0")
        _check(0.0 <= self.noise_rate < 1.0, p + "noise_rate", self.noise_rate, "0 <= rate < 1")
        _check(0.0 <= self.difficulty <= 1.0, p + "difficulty", self.difficulty, "0..1")
        _check(self.min_crop_px >= 8, p + "min_crop_px", self.min_crop_px, ">= 8")
        _check(1.0 <= self.max_aspect <= 4.0, p + "max_aspect", self.max_aspect, "1..4")
        _check(0.0 <= self.studio <= 1.0, p + "studio", self.studio, "0..1")
        _check(0.0 <= self.surveillance <= 1.0, p + "surveillance", self.surveillance, "0..1")
        _check(
            self.max_crop_px >= self.min_crop_px,
            p + "max_crop_px",
            self.max_crop_px,
            f">= min_crop_px ({self.min_crop_px})",
        )


@dataclass(kw_only=True)
class IngestConfig:
    """How a user's ImageFolder tree becomes shards."""

    layout: Layout = "auto"
    """'splits': root/{train,val,test}/<class>/*; 'single': root/<class>/*, split by ratio;
    'auto': 'splits' when root/train exists."""
    val_fraction: float = 0.1
    """Share of each class sent to validation when a split is carved out of a tree."""
    test_fraction: float = 0.1
    """Share of each class sent to test when a split is carved out of a tree."""
    max_pixels: int = 40_000_000
    """Images with more pixels are rejected (decompression bombs)."""
    seed: int = 0
    """Seed of the stratified split and of the row order in the shards."""

    def __post_init__(self) -> None:
        p = "data.ingest."
        _check(0 <= self.val_fraction < 1, p + "val_fraction", self.val_fraction, "0..1")
        _check(0 <= self.test_fraction < 1, p + "test_fraction", self.test_fraction, "0..1")
        _check(
            self.val_fraction + self.test_fraction < 1,
            p + "test_fraction",
            self.test_fraction,
            "val_fraction + test_fraction < 1",
        )
        _check(self.max_pixels >= 1, p + "max_pixels", self.max_pixels, ">= 1")


@dataclass(kw_only=True)
class DataConfig:
    """Where images come from and where the Parquet shards go."""

    source: str = "synth"
    """'synth' (the embedded dataset), an ImageFolder directory, or a shards URI."""
    shards_uri: str = ""
    """Where shards are written; empty means ``<output_dir>/<name>/data``. Local or s3://, gs://."""
    rows_per_shard: int = 1000
    """Rows per Parquet file."""
    workers: int = 0
    """Processes used to render / decode; 0 means one per CPU core."""
    real_eval: str = ""
    """An ImageFolder of real labelled photos (``<root>/<class>/*.jpg``, a local folder), scored
    by the benchmark for every backbone beside the test split; empty = none
    (``logo_train.real_eval``)."""
    real_outside: str = ""
    """A folder of real photos of brands that are none of the run's classes (any layout, a
    local folder): the benchmark reports the share the open-set answer calls ``unknown``;
    empty = none."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)

    def __post_init__(self) -> None:
        _check(bool(self.source), "data.source", self.source, "'synth' or a path/URI")
        _check(self.rows_per_shard >= 1, "data.rows_per_shard", self.rows_per_shard, ">= 1")
        _check(self.workers >= 0, "data.workers", self.workers, ">= 0")


@dataclass(kw_only=True)
class ModelConfig:
    """Which backbones to train, at which input size, from which weights."""

    backbones: list[str] = field(
        default_factory=lambda: [
            "resnet10t",
            "mobilenetv2_050",
            "swin_nano",
            "efficientformer_nano",
            "efficientnetv2_nano",
        ]
    )
    """Names from the registry (``logo_train.models.BACKBONES``); each is trained in turn."""
    image_size: int = 64
    """Model input side in pixels, the same for train, eval and inference."""
    resize: str = "pad"
    """How a crop that is not square becomes the square input, the same in training,
    evaluation, the benchmark and prediction: ``pad`` (aspect kept, the short side padded: a
    letterbox; chosen by measurement, docs/rendering.md), ``stretch`` (each side scaled on its
    own) or ``crop`` (aspect kept, the long side's centre). Square crops are the same under
    all three."""
    pretrained: dict[str, str] = field(default_factory=dict)
    """backbone -> where its starting weights come from: 'none' (random init), 'package'
    (ImageNet weights installed with the project, e.g. ``efficientnet_lite0``'s), 'hub'
    (timm's hub: needs network, a cluster) or a weights file (path or URI: a timm state dict,
    or the package's layout). A backbone not named takes the registry's default: 'package'
    for ``efficientnet_lite0``, 'none' for the five reference families (``logo_train.weights``)."""
    test_views: list[float] = field(default_factory=lambda: [1.0])
    """How the trained model looks at an image: the mean logits over these views, each the
    centre square of that share of the input's side resized back (1.0: the whole input;
    ``logo_train.models.TestViews``). Stored with the checkpoint and applied by the benchmark,
    the open-set fit, the export, ``predict`` and ``serve``; training and its validation see
    the whole input. Per backbone: ``train.per_backbone.<backbone>.test_views``."""

    def __post_init__(self) -> None:
        from logo_train.backbones import BACKBONES

        _check(
            bool(self.test_views)
            and all(0.25 <= v <= 1.0 for v in self.test_views)
            and len(set(self.test_views)) == len(self.test_views),
            "model.test_views",
            self.test_views,
            "shares of the side in 0.25..1.0, at least one, no repeats",
        )

        _check(bool(self.backbones), "model.backbones", self.backbones, "at least one backbone")
        for name in self.backbones:  # each one's input size: Config (per_backbone may set it)
            _check(
                name in BACKBONES,
                "model.backbones",
                name,
                f"a registered backbone, one of {sorted(BACKBONES)}",
            )
        _check(
            len(set(self.backbones)) == len(self.backbones),
            "model.backbones",
            self.backbones,
            "no repeats",
        )
        _check(16 <= self.image_size <= 1024, "model.image_size", self.image_size, "16..1024")
        _check(
            self.resize in ("stretch", "pad", "crop"),
            "model.resize",
            self.resize,
            "one of stretch, pad, crop",
        )
        from logo_train.backbones import HUB, NONE, PACKAGE

        for name, source in self.pretrained.items():
            _check(name in BACKBONES, "model.pretrained", name, "keys naming registered backbones")
            _check(
                bool(source),
                f"model.pretrained.{name}",
                source,
                f"'{NONE}', '{PACKAGE}', '{HUB}' or a weights file",
            )
            if source == HUB:
                from logo_train.backbones import hub_problem

                _check(
                    not hub_problem(name),
                    f"model.pretrained.{name}",
                    source,
                    f"a source of weights for {name} ({hub_problem(name)})",
                )
            if source == PACKAGE:
                _check(
                    BACKBONES[name].package is not None,
                    f"model.pretrained.{name}",
                    source,
                    "'package' only for a backbone with a weights package "
                    f"({sorted(n for n, s in BACKBONES.items() if s.package)})",
                )


@dataclass(kw_only=True)
class AugmentConfig:
    """Train-time augmentation (eval is resize + normalise only)."""

    strength: float = 0.5
    """RandAugment-like magnitude in [0, 1]; 0 turns augmentation off."""
    min_crop_scale: float = 0.6
    """Smallest image area kept by the random resized crop at full strength."""

    def __post_init__(self) -> None:
        _check(0 <= self.strength <= 1, "augment.strength", self.strength, "0..1")
        _check(
            0.1 <= self.min_crop_scale <= 1, "augment.min_crop_scale", self.min_crop_scale, "0.1..1"
        )


@dataclass(kw_only=True)
class CleanConfig:
    """The cleaning round (``train.clean``): after the audit, act on the labels it suspects and
    train the same backbone again, with the same recipe, on what is left (docs/labels.md)."""

    mode: CleanMode = "none"
    """'none'; 'drop' the suspected labels' rows; 'relabel' them with the model's prediction
    where its probability is at least ``relabel_confidence`` (the others are dropped)."""
    given_prob: float = 0.1
    """A label is suspected when the audited model gives it less than this probability (its
    loss is above -log of it). On clean data this flags 1-2% of the rows, spread over the
    classes; with wrong labels, nine in ten of the rows it flags are wrong (docs/labels.md)."""
    threshold: float = 0.0
    """...or when its trust is below this (0 = not by trust: the trust head's low values
    gather in the tail classes of clean data, 0.5 flagged 91% of one class there)..."""
    disagree: bool = False
    """...or when the model predicts another class (catches most wrong labels, but also every
    in-sample mistake: 3% of clean data)."""
    fraction: float = 0.0
    """> 0: act on this share of the training rows, the most suspect first, instead of
    ``given_prob`` / ``threshold`` / ``disagree``."""
    relabel_confidence: float = 0.5
    """mode 'relabel': the model's probability of its prediction needed to change a label."""
    max_fraction: float = 0.4
    """A round that would drop or change more than this share of the rows stops (naming the
    field): the audit is then not to be trusted that far."""
    rounds: int = 1
    """Cleaning rounds: each audits the last model, cleans and trains again."""
    loss: CleanLoss = ""
    """The loss the cleaned rounds train with: empty = the backbone's own (``train.loss``);
    'auto' = the backbone's own when the round acted on at least ``noisy_fraction`` of the rows
    (the labels are noisy: what the round missed is still a lot, a robust loss copes with it),
    else 'ce_weighted' (the labels look clean: plain weighted cross-entropy fits them best);
    or one of ``train.loss``'s values (docs/labels.md)."""
    noisy_fraction: float = 0.05
    """loss 'auto': the share of the rows a round must act on for the labels to count as
    noisy (about twice what the round acts on in clean data, 2.5%: a robust round 2 on clean
    labels costs ~1 point, plain CE on noisy ones 2-5, docs/labels.md)."""
    backbones: list[str] = field(default_factory=list)
    """Backbones to clean and train again; empty = the one with the best validation
    macro-F1 after training (the one the audit's list comes from)."""
    epochs: int = 0
    """0: a round trains the backbone again from its starting weights with its whole recipe.
    > 0: a round continues from the last round's best checkpoint (``train.start_from``) for
    this many epochs on the cleaned labels, at ``lr_scale`` x the recipe's peak learning rate
    (what round 1 learned is kept; docs/labels.md)."""
    lr_scale: float = 1.0
    """``epochs`` > 0: the continuation's OneCycle peak, as a share of the recipe's ``lr``."""

    def __post_init__(self) -> None:
        p = "train.clean."
        _check(self.epochs >= 0, p + "epochs", self.epochs, ">= 0")
        _check(0 < self.lr_scale <= 10, p + "lr_scale", self.lr_scale, "in (0, 10]")
        _check(0 <= self.given_prob < 1, p + "given_prob", self.given_prob, "0..<1")
        _check(0 <= self.threshold <= 1, p + "threshold", self.threshold, "0..1")
        _check(0 <= self.fraction < 1, p + "fraction", self.fraction, "0..<1")
        _check(
            0 <= self.relabel_confidence <= 1,
            p + "relabel_confidence",
            self.relabel_confidence,
            "0..1",
        )
        _check(0 < self.max_fraction < 1, p + "max_fraction", self.max_fraction, "0..<1")
        _check(self.rounds >= 1, p + "rounds", self.rounds, ">= 1")
        _check(0 < self.noisy_fraction < 1, p + "noisy_fraction", self.noisy_fraction, "0..<1")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(kw_only=True)
class TrainConfig:
    """Ray Train: optimisation, loss, workers and checkpoints."""

    epochs: int = 8
    batch_size: int = 64
    """Global batch; each of the ``num_workers`` workers gets ``batch_size // num_workers``."""
    eval_batch_size: int = 256
    optimizer: OptimizerName = "adamw"
    lr: float = 3e-3
    """OneCycle's peak learning rate."""
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.2
    """Share of the steps OneCycle spends rising to ``lr``."""
    loss: LossName = "trust_penalty"
    """'ce' (plain), 'ce_weighted' (class weights, the reference recipe), 'trust_penalty'
    (class-weighted CE scaled by the trust head's per-sample trust, plus a penalty) or 'gce'
    (class-weighted generalised cross-entropy, Zhang & Sabuncu 2018: bounded, so wrong labels
    pull less)."""
    class_weight_power: float = 1.0
    """beta in ``w_c = (N_max / N_c) ** beta``: 1 = reference recipe, 0 = no weighting."""
    penalty_weight: float = 1.0
    """trust_penalty: weight of ``mean(-log t)``; a sample keeps full trust while its loss is
    below ``penalty_weight`` times the batch's mean loss (with ``trust_normalise``). Small
    values (0.1) won the noise study on models trained to convergence; on short runs of an
    under-trained model they starve the hard classes, 1.0 does not (docs/labels.md)."""
    trust_normalise: bool = True
    """trust_penalty: scale the penalty by the batch's mean loss (guards against the whole
    batch's trust collapsing while losses are large); false = the plain formula."""
    trust_rescale: bool = True
    """trust_penalty: rescale the backbone's per-sample trust weights to batch mean 1, so an
    under-trained model whose whole batch has low trust keeps learning at full speed."""
    trust_warmup_epochs: int = 2
    """trust_penalty: epochs of plain weighted CE before trust scales the loss (the head
    learns from the start); gce: epochs of plain weighted CE before the bounded loss (it
    learns slowly from random init)."""
    gce_q: float = 0.7
    """gce: q of ``(1 - p_y ** q) / q``: towards 0 it is cross-entropy, at 1 the (bounded,
    noise-robust, slow to fit) mean absolute error; 0.7 is the paper's."""
    trust_dim: int = 64
    """trust_penalty: width of the trust head's attention."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy (every loss); 0 = none."""
    start_from: str = ""
    """A checkpoint folder (local or URI) whose model weights the training starts from instead
    of ``model.pretrained``'s (the cleaning round's continuation sets it; or a model of an
    earlier run, trained further on new data); same backbone, input size and classes."""
    min_steps: int = 0
    """At least this many optimisation steps: ``epochs`` is raised for a small training split
    (a user's few hundred photos) so a recipe sized for the embedded data still converges;
    0 = ``epochs`` as given."""
    frozen_stages: int = 0
    """Fine-tuning: the first N parameter groups of the backbone (timm's coarse grouping: the
    stem, then one per stage of blocks) keep their pretrained weights and batch-norm
    statistics; 0 = everything trains (``models.freeze_leading``)."""
    num_workers: int = 2
    """DDP workers of the run's worker group (one group trains every backbone in turn)."""
    cpus_per_worker: float = 0.5
    """Fractional on small machines: Ray Data needs the CPUs the workers leave free."""
    torch_threads: int = 0
    """torch intra-op threads per worker; 0 = Ray's default (the worker's CPUs, at least 1).
    A fractional-CPU worker on a small machine may use more threads than it reserves."""
    gpus_per_worker: float = 0.0
    """> 0 trains on GPUs (NCCL, AMP, channels_last)."""
    amp: bool = True
    """Mixed precision on GPU (bf16 where supported, else fp16 with a grad scaler)."""
    channels_last: bool = True
    """channels_last (NHWC) memory format, on GPU and CPU."""
    shuffle_buffer: int = 512
    """Rows in each worker's local shuffle buffer (seeded), on top of the shuffle every pass
    gets: a new file order and the rows of each shard in a new order, both from ``seed``."""
    shared_passes: bool = False
    """Render the augmented passes of the train split once, before training, into Ray's object
    store, and let every backbone of the run train on them (epoch e on pass e): max(epochs)
    passes instead of one per epoch of every backbone, and no rendering beside the training.
    Needs passes x train images x 3 x image_size^2 bytes of object store (quick: ~0.4 GB).
    A run of one backbone (a Tune trial) streams either way: nothing to share."""
    checkpoints_to_keep: int = 2
    """Latest Ray checkpoints kept for resume (each backbone's best is kept apart)."""
    max_failures: int = 2
    """Worker-group restarts (from the last checkpoint) before a run fails."""
    autoscale: bool = False
    """The cluster adds nodes on demand: skip the check that workers fit the current cluster."""
    seed: int = 0
    """Seed of the model's initialisation, the training stream (file and row order,
    augmentation) and the shuffle buffer: on CPU with one worker, the same config gives the same
    per-epoch metrics (docs/training.md, "Reproducibility")."""
    per_backbone: dict[str, dict[str, float | list[float]]] = field(default_factory=dict)
    """The recipe per backbone: ``train.*`` fields (``RECIPE_FIELDS``) that differ for one
    backbone, e.g. ``{swin_nano: {lr: 0.0005, epochs: 16}}``; tuned parameters apply on top."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    """The cleaning round after the audit (the pipeline's ``clean`` stage)."""

    def __post_init__(self) -> None:
        p = "train."
        _check(self.epochs >= 1, p + "epochs", self.epochs, ">= 1")
        _check(self.lr > 0, p + "lr", self.lr, "> 0")
        _check(self.weight_decay >= 0, p + "weight_decay", self.weight_decay, ">= 0")
        _check(0 < self.warmup_fraction < 1, p + "warmup_fraction", self.warmup_fraction, "0..1")
        _check(
            0 <= self.class_weight_power <= 1,
            p + "class_weight_power",
            self.class_weight_power,
            "0..1",
        )
        _check(self.penalty_weight > 0, p + "penalty_weight", self.penalty_weight, "> 0")
        _check(0 < self.gce_q <= 1, p + "gce_q", self.gce_q, "0 < q <= 1")
        _check(
            self.loss not in ("trust_penalty", "gce")
            or 0 <= self.trust_warmup_epochs < self.epochs,
            p + "trust_warmup_epochs",
            self.trust_warmup_epochs,
            f"0..epochs-1 ({self.epochs - 1})",
        )
        _check(
            self.trust_warmup_epochs >= 0,
            p + "trust_warmup_epochs",
            self.trust_warmup_epochs,
            ">= 0",
        )
        _check(self.trust_dim >= 4, p + "trust_dim", self.trust_dim, ">= 4")
        _check(self.frozen_stages >= 0, p + "frozen_stages", self.frozen_stages, ">= 0")
        _check(self.min_steps >= 0, p + "min_steps", self.min_steps, ">= 0")
        _check(0 <= self.label_smoothing < 1, p + "label_smoothing", self.label_smoothing, "0..<1")
        _check(self.num_workers >= 1, p + "num_workers", self.num_workers, ">= 1")
        _check(self.torch_threads >= 0, p + "torch_threads", self.torch_threads, ">= 0")
        _check(
            self.batch_size >= self.num_workers,
            p + "batch_size",
            self.batch_size,
            f">= num_workers ({self.num_workers})",
        )
        _check(self.eval_batch_size >= 1, p + "eval_batch_size", self.eval_batch_size, ">= 1")
        _check(self.cpus_per_worker > 0, p + "cpus_per_worker", self.cpus_per_worker, "> 0")
        _check(self.gpus_per_worker >= 0, p + "gpus_per_worker", self.gpus_per_worker, ">= 0")
        _check(self.shuffle_buffer >= 0, p + "shuffle_buffer", self.shuffle_buffer, ">= 0")
        _check(
            self.checkpoints_to_keep >= 1,
            p + "checkpoints_to_keep",
            self.checkpoints_to_keep,
            ">= 1",
        )
        _check(self.max_failures >= 0, p + "max_failures", self.max_failures, ">= 0")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


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

RECIPE_FIELDS = (
    "epochs",
    "lr",
    "weight_decay",
    "warmup_fraction",
    "trust_warmup_epochs",
    "penalty_weight",
    "class_weight_power",
    "label_smoothing",
    "gce_q",
    "frozen_stages",
    "min_steps",
    "image_size",
    "test_views",
)
"""Fields a backbone's recipe (``train.per_backbone``) may set: ``train.*`` fields, and
``image_size`` and ``test_views`` (``model.*``: a backbone's own input size and views)."""
MODEL_RECIPE_FIELDS = ("image_size", "test_views")
"""The recipe fields that set ``model.*`` instead of ``train.*``."""

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
    seed: int = 0
    """Seed of the sampler: same seed, same suggestions for the same results."""
    space: dict[str, SearchParam] = field(default_factory=_default_space)
    """``train.*`` field -> range; fields: ``logo_train.config.SEARCHABLE``."""

    def __post_init__(self) -> None:
        p = "tune."
        _check(self.num_samples >= 1, p + "num_samples", self.num_samples, ">= 1")
        _check(
            self.max_concurrent_trials >= 0,
            p + "max_concurrent_trials",
            self.max_concurrent_trials,
            ">= 0 (0 = sized to the cluster)",
        )
        _check(self.epochs >= 0, p + "epochs", self.epochs, ">= 0 (0 = train.epochs)")
        _check(self.grace_period >= 1, p + "grace_period", self.grace_period, ">= 1")
        _check(self.reduction_factor >= 2, p + "reduction_factor", self.reduction_factor, ">= 2")
        _check(self.trial_cpus >= 0, p + "trial_cpus", self.trial_cpus, ">= 0")
        _check(bool(self.space), p + "space", self.space, "at least one parameter")
        for key, param in self.space.items():
            name = f"{p}space.{key}"
            _check(key in SEARCHABLE, name, key, f"one of {list(SEARCHABLE)}")
            if param.kind == "choice":
                _check(bool(param.values), name + ".values", param.values, "a non-empty list")
                continue
            _check(param.low < param.high, name + ".high", param.high, f"> low ({param.low})")
            if param.kind == "loguniform":
                _check(param.low > 0, name + ".low", param.low, "> 0 (log scale)")


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
    num_cpus: float = 1.0
    """CPUs of the Ray task that measures (and torch / ONNX Runtime threads)."""
    num_gpus: float = 0.0
    """GPUs of that task: > 0 measures on the GPU, where the model would serve."""

    def __post_init__(self) -> None:
        p = "benchmark."
        _check(self.split in ("train", "val", "test"), p + "split", self.split, "train|val|test")
        _check(self.latency_runs >= 2, p + "latency_runs", self.latency_runs, ">= 2")
        _check(self.warmup_runs >= 0, p + "warmup_runs", self.warmup_runs, ">= 0")
        _check(self.throughput_batch >= 1, p + "throughput_batch", self.throughput_batch, ">= 1")
        _check(self.throughput_runs >= 1, p + "throughput_runs", self.throughput_runs, ">= 1")
        _check(self.onnx_tolerance > 0, p + "onnx_tolerance", self.onnx_tolerance, "> 0")
        _check(
            0 < self.open_set_keep <= 1, p + "open_set_keep", self.open_set_keep, "0 < keep <= 1"
        )
        _check(0 <= self.open_set_shift <= 1, p + "open_set_shift", self.open_set_shift, "0..1")
        _check(self.open_set_passes >= 1, p + "open_set_passes", self.open_set_passes, ">= 1")
        _check(0 < self.open_set_max <= 1, p + "open_set_max", self.open_set_max, "0 < max <= 1")
        _check(self.num_cpus >= 1, p + "num_cpus", self.num_cpus, ">= 1")
        _check(self.num_gpus >= 0, p + "num_gpus", self.num_gpus, ">= 0")


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

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", self.name, "a non-empty name")
        if self.train.per_backbone:
            from logo_train.backbones import BACKBONES

            for backbone, overrides in self.train.per_backbone.items():
                name = f"train.per_backbone.{backbone}"
                _check(backbone in BACKBONES, name, overrides, "a registered backbone's name")
                for key in overrides:
                    _check(
                        key in RECIPE_FIELDS,
                        f"{name}.{key}",
                        overrides[key],
                        f"a field of {list(RECIPE_FIELDS)}",
                    )
        for backbone in self.train.clean.backbones:
            _check(
                backbone in self.model.backbones,
                "train.clean.backbones",
                self.train.clean.backbones,
                f"names from model.backbones {self.model.backbones}",
            )
        proxy = self.tune.proxy_backbone
        if proxy:  # any registered backbone can stand in for the others
            from logo_train.backbones import BACKBONES

            _check(
                proxy in BACKBONES,
                "tune.proxy_backbone",
                proxy,
                f"empty (= the first backbone) or a registered backbone {sorted(BACKBONES)}",
            )
        self._check_image_sizes()
        _check(
            not self.tune.enabled or self.tune.epochs <= self.train.epochs,
            "tune.epochs",
            self.tune.epochs,
            f"<= train.epochs ({self.train.epochs})",
        )
        if self.train.loss in ("trust_penalty", "gce"):  # both start with a warm-up
            trial_epochs = self.tune.epochs or self.train.epochs
            searched = self.tune.space.get("trust_warmup_epochs")
            if searched is None:
                name, most = "tune.epochs", self.train.trust_warmup_epochs
            else:
                name = "tune.space.trust_warmup_epochs"
                most = max(searched.values) if searched.kind == "choice" else searched.high
            _check(
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
        _set_fields(data, "train", fields)
        return config_from_dict(data)

    def for_backbone(self, backbone: str) -> Config:
        """This config with ``train.per_backbone[backbone]`` applied (validated)."""
        overrides = self.train.per_backbone.get(backbone)
        if not overrides:
            return self
        data = config_to_dict(self)
        if "image_size" in overrides:  # the others keep theirs: model.image_size becomes this one's
            recipes = data["train"]["per_backbone"]
            for other, size in self.image_sizes().items():
                recipes.setdefault(other, {}).setdefault("image_size", size)
        for key, value in overrides.items():  # the same coercion as with_train
            _set_fields(data, "model" if key in MODEL_RECIPE_FIELDS else "train", {key: value})
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


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def _set_fields(data: dict[str, Any], section: str, fields: dict[str, Any]) -> None:
    """``data[section][key] = value`` for each field of a config dict; a number coerced to the
    field's type (int fields round); an unknown key names the section."""
    for key, value in fields.items():
        if key not in data[section]:
            raise ValueError(f"'{key}' is not a {section}.* config field")
        current = data[section][key]
        if _is_number(value) and _is_number(current):
            value = int(round(value)) if isinstance(current, int) else float(value)
        data[section][key] = value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; int is accepted where float is expected."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config field '{name}' = {value!r}: expected a mapping")
        return _from_dict(tp, value, name + ".")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"config field '{name}' = {value!r}: expected one of {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, name)
            except ValueError:
                continue
        raise ValueError(f"config field '{name}' = {value!r}: expected {tp}")
    if tp is type(None):
        if value is not None:
            raise ValueError(f"config field '{name}' = {value!r}: expected null")
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config field '{name}' = {value!r}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config field '{name}' = {value!r}: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config field '{name}' = {value!r}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config field '{name}' = {value!r}: expected a string")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config field '{name}' = {value!r}: expected a mapping")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_tp, f"{name} key"): _coerce(v, val_tp, f"{name}.{k}")
            for k, v in value.items()
        }
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field '{name}' = {value!r}: expected a list")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys here: {sorted(known)})"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _from_dict(Config, data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"data.synth.noise_rate=0.4"`` -> ``("data.synth.noise_rate", 0.4)`` (YAML-typed value)."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. data.synth.seed=1")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


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


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs; ``logo-train serve``'s flags."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch_size: int = 16
    """Requests one model call may answer together (1: no batching)."""
    batch_wait_ms: float = 5.0
    """How long a replica waits for more requests before it runs a batch that is not full."""
    max_bytes: int = 8 * 2**20
    """Larger bodies are refused (413 too_many_bytes) before they are decoded."""
    max_pixels: int = 4_000_000
    """Larger images are refused (413 too_many_pixels) from their header."""
    cpus_per_replica: float = 1.0
    """Each model replica's CPUs (its ONNX Runtime threads)."""
    min_confidence: float | None = None
    """The open-set threshold; None: the model's own (``model.json``)."""
    default_top_k: int = 3

    def check(self) -> None:
        for name in ("replicas", "max_batch_size", "max_bytes", "max_pixels", "default_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve option '{name}' must be at least 1")
        if not 0 < self.port < 65536:
            raise ValueError(f"serve option 'port' must be in 1..65535, got {self.port}")
        if self.batch_wait_ms < 0 or self.cpus_per_replica <= 0:
            raise ValueError("serve options 'batch_wait_ms' >= 0 and 'cpus_per_replica' > 0")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise ValueError(
                f"serve option 'min_confidence' must be in 0..1: {self.min_confidence}"
            )
