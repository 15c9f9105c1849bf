"""The ``model.*``, ``augment.*`` and ``train.*`` sections (with ``train.clean``): what is
trained, from which weights, with which recipe, and the cleaning round."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from logo_train.config.fields import check

LossName = Literal["ce", "ce_weighted", "trust_penalty", "gce"]
OptimizerName = Literal["adamw", "adam", "sgd"]
CleanMode = Literal["none", "drop", "relabel"]
CleanLoss = Literal["", "auto", LossName]  # nested Literals flatten
"""The cleaned rounds' loss: one of ``LossName``, empty for the backbone's own, or 'auto'."""

RECIPE_FIELDS = (
    "epochs",
    "lr",
    "weight_decay",
    "warmup_fraction",
    "grad_clip",
    "trust_warmup_epochs",
    "penalty_weight",
    "class_weight_power",
    "label_smoothing",
    "gce_q",
    "frozen_stages",
    "cpu_precision",
    "layer_decay",
    "min_steps",
    "patience",
    "wise_alpha",
    "image_size",
    "test_views",
)
"""Fields a backbone's recipe (``train.per_backbone``) may set: ``train.*`` fields, and
``image_size`` and ``test_views`` (``model.*``: a backbone's own input size and views)."""
MODEL_RECIPE_FIELDS = ("image_size", "test_views")
"""The recipe fields that set ``model.*`` instead of ``train.*``."""
Precision = Literal["auto", "float32", "bfloat16"]
"""``train.frozen_precision``'s, ``train.audit_precision``'s and ``train.cpu_precision``'s
values."""
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)


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
    """Names from the registry (``logo_train.backbones.BACKBONES``); each is trained in turn."""
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

        check(
            bool(self.test_views)
            and all(0.25 <= v <= 1.0 for v in self.test_views)
            and len(set(self.test_views)) == len(self.test_views),
            "model.test_views",
            self.test_views,
            "shares of the side in 0.25..1.0, at least one, no repeats",
        )

        check(bool(self.backbones), "model.backbones", self.backbones, "at least one backbone")
        for name in self.backbones:  # each one's input size: Config (per_backbone may set it)
            check(
                name in BACKBONES,
                "model.backbones",
                name,
                f"a registered backbone, one of {sorted(BACKBONES)}",
            )
        check(
            len(set(self.backbones)) == len(self.backbones),
            "model.backbones",
            self.backbones,
            "no repeats",
        )
        check(16 <= self.image_size <= 1024, "model.image_size", self.image_size, "16..1024")
        check(
            self.resize in ("stretch", "pad", "crop"),
            "model.resize",
            self.resize,
            "one of stretch, pad, crop",
        )
        from logo_train.backbones import HUB, NONE, PACKAGE

        for name, source in self.pretrained.items():
            check(name in BACKBONES, "model.pretrained", name, "keys naming registered backbones")
            check(
                bool(source),
                f"model.pretrained.{name}",
                source,
                f"'{NONE}', '{PACKAGE}', '{HUB}' or a weights file",
            )
            if source == HUB:
                from logo_train.backbones import hub_problem

                check(
                    not hub_problem(name),
                    f"model.pretrained.{name}",
                    source,
                    f"a source of weights for {name} ({hub_problem(name)})",
                )
            if source == PACKAGE:
                check(
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
        check(0 <= self.strength <= 1, "augment.strength", self.strength, "0..1")
        check(
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
    relabel_confidence: float = 0.6
    """mode 'relabel': the model's probability of its prediction needed to change a label
    (below it the row is dropped). On the quick run's audit the relabels at 0.5-0.6 were right
    for 63% of rows: at 0.6 the round leaves 126 wrong labels instead of 143 (docs/labels.md)."""
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
        check(self.epochs >= 0, p + "epochs", self.epochs, ">= 0")
        check(0 < self.lr_scale <= 10, p + "lr_scale", self.lr_scale, "in (0, 10]")
        check(0 <= self.given_prob < 1, p + "given_prob", self.given_prob, "0..<1")
        check(0 <= self.threshold <= 1, p + "threshold", self.threshold, "0..1")
        check(0 <= self.fraction < 1, p + "fraction", self.fraction, "0..<1")
        check(
            0 <= self.relabel_confidence <= 1,
            p + "relabel_confidence",
            self.relabel_confidence,
            "0..1",
        )
        check(0 < self.max_fraction < 1, p + "max_fraction", self.max_fraction, "0..<1")
        check(self.rounds >= 1, p + "rounds", self.rounds, ">= 1")
        check(0 < self.noisy_fraction < 1, p + "noisy_fraction", self.noisy_fraction, "0..<1")

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
    grad_clip: float = 0.0
    """Largest global L2 norm of the gradients per step (clipped to it, as timm's
    ``--clip-grad``); 0 = off."""
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
    patience: int = 0
    """Early stopping: stop a backbone's training once this many validations in a row have
    not raised its best validation macro-F1 by more than ``min_delta`` (the checkpoint kept
    is still the best one); 0 = train every epoch. For long recipes (a GPU profile's 200
    epochs); the quick profile trains a few epochs on a schedule and keeps it off."""
    min_delta: float = 0.0
    """Early stopping: the rise of the best validation macro-F1 that counts as learning."""
    wise_alpha: float = 1.0
    """WiSE-FT for a backbone that starts from weights (``logo_train.wise``): once trained, its
    best weights become ``wise_alpha`` x fine-tuned + (1 - ``wise_alpha``) x the starting
    weights (the classifier kept), validated again; 1 = off (the profiles: +0.7 to +2.2 points
    of real top-1, but up to -0.012 on the test split and fewer outside brands answered
    'unknown', docs/benchmarks.md "WiSE-FT")."""
    wise_max_drop: float = 0.005
    """WiSE-FT: the average is kept only when its validation macro-F1 is at most this much
    below the weights' as trained; otherwise the trained weights stay (the result says so)."""
    frozen_stages: int = 0
    """Fine-tuning: the first N parameter groups of the backbone (timm's coarse grouping: the
    stem, then one per stage of blocks) keep their pretrained weights and batch-norm
    statistics; 0 = everything trains (``models.freeze_leading``)."""
    frozen_precision: Precision = "auto"
    """The frozen stages' forward pass in a training step on a CPU: ``bfloat16`` (no gradients
    flow there, so only their features are rounded: Lite0's frozen stem and three stages at
    112 px run 2.2x faster, the step ~1.2x), ``float32``, or ``auto``: bfloat16 where the CPU
    computes it in hardware (AVX512-BF16 or AMX), else float32. Validation, the benchmark,
    export and prediction stay float32 (the audit: ``audit_precision``); on a GPU ``amp`` decides
    (``models.frozen_in_bfloat16``, docs/training.md)."""
    cpu_precision: Precision = "float32"
    """A training step's forward pass on a CPU: ``float32``, ``bfloat16`` (the whole forward
    under CPU autocast, the weights, gradients and loss in float32), or ``auto``: bfloat16 where
    the CPU computes it in hardware, else float32. It pays where dense convolutions dominate
    (resnet10t at 32 px: 1.3x, ``benchmarks/cpu_bf16.py``) and loses where depthwise ones do
    (MobileNetV2, EfficientNetV2, Lite0: 0.67-0.88x): a per-backbone choice
    (``train.per_backbone``). On a GPU ``amp`` decides."""
    audit_precision: Precision = "auto"
    """The label audit's forward passes on a CPU (every training row scored, once per model and
    round): ``bfloat16`` under CPU autocast (Lite0 at 112 px scores 1.4-1.8x faster; the
    probabilities move by up to ~0.2, the quick run's cleaning plan by 8 of 5,555 rows, the
    flipped labels' AUROC by < 0.001: docs/labels.md), ``float32``, or ``auto``: bfloat16 where
    the CPU computes it in hardware, except for the audit a cleaning round acts on, which stays
    float32 (``audit.audit_precision``). On a GPU the audit runs in float32."""
    layer_decay: float = 1.0
    """Layer-wise learning-rate decay (timm's ``layer_decay``): the classifier trains at the
    full rate, each block below it at this factor times the one above (ImageNet features
    further from the head change less); 1 = one rate for every layer."""
    num_workers: int = 2
    """DDP workers of a worker group (a group trains its backbones in turn: one per input
    size, or ``lanes`` of them side by side)."""
    cpus_per_worker: float = 0.5
    """Fractional on small machines: Ray Data needs the CPUs the workers leave free."""
    torch_threads: int = 0
    """torch intra-op threads per worker; 0 = Ray's default (the worker's CPUs, at least 1).
    A fractional-CPU worker on a small machine may use more threads than it reserves."""
    lanes: int = 1
    """Worker groups that train one input size's backbones side by side on CPUs: the backbones
    are dealt in turn (in ``model.backbones``' order) to this many Ray Train runs, started
    together, whose workers each get ``cpus_per_worker / lanes`` CPUs and ``torch_threads /
    lanes`` threads (at least 1). Small models on few cores use two one-thread processes
    better than one two-thread process (the quick profile's 32 px families: 1.0-1.65x the
    images per second, their train stage 327 -> 282 s: docs/training.md). 1 = one run per
    input size, as on GPUs, where each worker has its device and this field is not used
    (``train.lanes_of``)."""
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
    per_backbone: dict[str, dict[str, float | str | list[float]]] = field(default_factory=dict)
    """The recipe per backbone: ``train.*`` fields (``RECIPE_FIELDS``) that differ for one
    backbone, e.g. ``{swin_nano: {lr: 0.0005, epochs: 16}}``; tuned parameters apply on top."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    """The cleaning round after the audit (the pipeline's ``clean`` stage)."""

    def __post_init__(self) -> None:
        p = "train."
        check(self.epochs >= 1, p + "epochs", self.epochs, ">= 1")
        check(self.lr > 0, p + "lr", self.lr, "> 0")
        check(self.weight_decay >= 0, p + "weight_decay", self.weight_decay, ">= 0")
        check(0 < self.warmup_fraction < 1, p + "warmup_fraction", self.warmup_fraction, "0..1")
        check(
            0 <= self.class_weight_power <= 1,
            p + "class_weight_power",
            self.class_weight_power,
            "0..1",
        )
        check(self.penalty_weight > 0, p + "penalty_weight", self.penalty_weight, "> 0")
        check(0 < self.gce_q <= 1, p + "gce_q", self.gce_q, "0 < q <= 1")
        check(
            self.loss not in ("trust_penalty", "gce")
            or 0 <= self.trust_warmup_epochs < self.epochs,
            p + "trust_warmup_epochs",
            self.trust_warmup_epochs,
            f"0..epochs-1 ({self.epochs - 1})",
        )
        check(
            self.trust_warmup_epochs >= 0,
            p + "trust_warmup_epochs",
            self.trust_warmup_epochs,
            ">= 0",
        )
        check(self.trust_dim >= 4, p + "trust_dim", self.trust_dim, ">= 4")
        check(self.frozen_stages >= 0, p + "frozen_stages", self.frozen_stages, ">= 0")
        check(0 < self.layer_decay <= 1, p + "layer_decay", self.layer_decay, "in (0, 1]")
        self._check_after_training()
        check(self.min_steps >= 0, p + "min_steps", self.min_steps, ">= 0")
        check(0 <= self.label_smoothing < 1, p + "label_smoothing", self.label_smoothing, "0..<1")
        check(self.num_workers >= 1, p + "num_workers", self.num_workers, ">= 1")
        check(self.torch_threads >= 0, p + "torch_threads", self.torch_threads, ">= 0")
        check(
            self.batch_size >= self.num_workers,
            p + "batch_size",
            self.batch_size,
            f">= num_workers ({self.num_workers})",
        )
        check(self.eval_batch_size >= 1, p + "eval_batch_size", self.eval_batch_size, ">= 1")
        check(self.grad_clip >= 0, p + "grad_clip", self.grad_clip, ">= 0 (0 = off)")
        check(self.cpus_per_worker > 0, p + "cpus_per_worker", self.cpus_per_worker, "> 0")
        check(self.gpus_per_worker >= 0, p + "gpus_per_worker", self.gpus_per_worker, ">= 0")
        check(self.lanes >= 1, p + "lanes", self.lanes, ">= 1")
        check(self.shuffle_buffer >= 0, p + "shuffle_buffer", self.shuffle_buffer, ">= 0")
        check(
            self.checkpoints_to_keep >= 1,
            p + "checkpoints_to_keep",
            self.checkpoints_to_keep,
            ">= 1",
        )
        check(self.max_failures >= 0, p + "max_failures", self.max_failures, ">= 0")

    def _check_after_training(self) -> None:
        """Early stopping and WiSE-FT: what decides which weights a training hands over."""
        p = "train."
        check(self.patience >= 0, p + "patience", self.patience, ">= 0 (0 = off)")
        check(0 <= self.min_delta < 1, p + "min_delta", self.min_delta, "0..<1")
        check(0 < self.wise_alpha <= 1, p + "wise_alpha", self.wise_alpha, "in (0, 1]")
        check(0 <= self.wise_max_drop <= 1, p + "wise_max_drop", self.wise_max_drop, "0..1")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0
