"""The ``data.*`` section: the embedded dataset's generator, a user's ImageFolder ingest and
where the shards go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from logo_train.config.fields import check

NoiseKind = Literal["symmetric", "pairs"]
ImageFormat = Literal["png", "jpeg"]
Layout = Literal["auto", "splits", "single"]


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
    wide_shots: float = 0.0
    """Share of photos that show the badge small in its surroundings (a car's front, a wheel,
    a product shot with margins: the badge a quarter to a half of the frame), sharp: many web
    photos are taken so; 0 = none (every crop frames the badge)."""
    wordmarks: float = 0.0
    """Share of the light-background crops (``studio``) that show the name in capitals beside
    the logo (below it or to its right), as brand artwork, product shots and dealership signs
    do; 0 = none."""
    classic_badges: bool = True
    """Draw the badges most cars still wear where simple-icons has the newer design (Citroen's
    chevrons without the oval, Renault's 1992 lozenge, Peugeot's standing lion of 2002-2021),
    beside the current one."""
    unknown_vehicles: bool = True
    """The ``unknown`` class also holds other makers' badges (20), not only non-vehicle icons."""
    image_format: ImageFormat = "png"
    """Encoding of the stored images."""
    seed: int = 0
    """Seed of everything random in the generator: same seed, same bytes."""

    def __post_init__(self) -> None:
        p = "data.synth."
        check(
            self.image_size == 0 or 8 <= self.image_size <= 1024,
            p + "image_size",
            self.image_size,
            "8..1024, or 0 (the largest input size of the run's backbones)",
        )
        check(self.images_per_class >= 1, p + "images_per_class", self.images_per_class, ">= 1")
        check(
            1.0 <= self.imbalance_ratio <= self.images_per_class,
            p + "imbalance_ratio",
            self.imbalance_ratio,
            f"1..images_per_class ({self.images_per_class}) so every class keeps >= 1 image",
        )
        check(self.val_per_class >= 0, p + "val_per_class", self.val_per_class, ">= 0")
        check(self.test_per_class >= 0, p + "test_per_class", self.test_per_class, ">= 0")
        check(0.0 <= self.noise_rate < 1.0, p + "noise_rate", self.noise_rate, "0 <= rate < 1")
        check(0.0 <= self.difficulty <= 1.0, p + "difficulty", self.difficulty, "0..1")
        check(self.min_crop_px >= 8, p + "min_crop_px", self.min_crop_px, ">= 8")
        check(1.0 <= self.max_aspect <= 4.0, p + "max_aspect", self.max_aspect, "1..4")
        check(0.0 <= self.studio <= 1.0, p + "studio", self.studio, "0..1")
        check(0.0 <= self.surveillance <= 1.0, p + "surveillance", self.surveillance, "0..1")
        check(0.0 <= self.wide_shots <= 1.0, p + "wide_shots", self.wide_shots, "0..1")
        check(0.0 <= self.wordmarks <= 1.0, p + "wordmarks", self.wordmarks, "0..1")
        check(
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
        check(0 <= self.val_fraction < 1, p + "val_fraction", self.val_fraction, "0..1")
        check(0 <= self.test_fraction < 1, p + "test_fraction", self.test_fraction, "0..1")
        check(
            self.val_fraction + self.test_fraction < 1,
            p + "test_fraction",
            self.test_fraction,
            "val_fraction + test_fraction < 1",
        )
        check(self.max_pixels >= 1, p + "max_pixels", self.max_pixels, ">= 1")


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
        check(bool(self.source), "data.source", self.source, "'synth' or a path/URI")
        check(self.rows_per_shard >= 1, "data.rows_per_shard", self.rows_per_shard, ">= 1")
        check(self.workers >= 0, "data.workers", self.workers, ">= 0")
