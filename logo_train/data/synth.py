"""The embedded dataset: 28 vehicle-logo classes rendered from real brand artwork.

Counts follow an exponential long tail (``images_per_class`` at the head, ``/ imbalance_ratio``
at the tail; which class is where is drawn from the seed). Label noise flips an exact share of
the training labels (``symmetric``: to any other class; ``pairs``: to the look-alike partner);
the true label stays in ``clean_label``. Validation and test are balanced and clean unless
``noisy_val``. Each sample has its own seed, so the bytes do not depend on the worker count.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from logo_train.config import SynthConfig
from logo_train.data import badge, brands
from logo_train.data.parallel import map_chunks
from logo_train.data.shards import (
    SPLITS,
    Manifest,
    prepare_output,
    write_manifest,
    write_splits,
)

log = logging.getLogger(__name__)

_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}


@dataclass(frozen=True)
class PlannedSample:
    split: str
    index: int
    clean_label: int
    label: int


def train_counts(cfg: SynthConfig, n_classes: int = len(brands.CLASS_NAMES)) -> list[int]:
    """Training images per class: ``head * ratio ** (-rank / (C - 1))``, rank from the seed."""
    ranks = np.random.default_rng([cfg.seed, 7]).permutation(n_classes)
    exponent = ranks / max(n_classes - 1, 1)
    counts = np.round(cfg.images_per_class * cfg.imbalance_ratio ** (-exponent)).astype(int)
    return np.maximum(counts, 1).tolist()


def flip_labels(
    labels: np.ndarray, rate: float, kind: str, rng: np.random.Generator, n_classes: int
) -> np.ndarray:
    """Replace exactly ``round(rate * len(labels))`` labels with a wrong one."""
    noisy = labels.copy()
    n_flip = int(round(rate * len(labels)))
    if n_flip == 0:
        return noisy
    idx = rng.choice(len(labels), size=n_flip, replace=False)
    if kind == "pairs":
        partner = np.asarray(brands.partner_index())
        noisy[idx] = partner[labels[idx]]
    elif kind == "symmetric":
        shift = rng.integers(1, n_classes, size=n_flip)  # any class but the true one
        noisy[idx] = (labels[idx] + shift) % n_classes
    else:
        raise ValueError(f"unknown noise kind {kind!r}: expected 'symmetric' or 'pairs'")
    return noisy


def make_plan(cfg: SynthConfig) -> list[PlannedSample]:
    """Every sample to render, splits in order, rows shuffled within each split."""
    n_classes = len(brands.CLASS_NAMES)
    per_split = {
        "train": train_counts(cfg, n_classes),
        "val": [cfg.val_per_class] * n_classes,
        "test": [cfg.test_per_class] * n_classes,
    }
    plan: list[PlannedSample] = []
    for split in SPLITS:
        rng = np.random.default_rng([cfg.seed, 11, _SPLIT_CODE[split]])
        clean = np.repeat(np.arange(n_classes), per_split[split])
        clean = clean[rng.permutation(len(clean))]
        noisy_split = split == "train" or (split == "val" and cfg.noisy_val)
        given = (
            flip_labels(clean, cfg.noise_rate, cfg.noise_kind, rng, n_classes)
            if noisy_split
            else clean
        )
        plan += [
            PlannedSample(split, i, int(c), int(g))
            for i, (c, g) in enumerate(zip(clean, given, strict=True))
        ]
    return plan


# --- rendering --------------------------------------------------------------------------------

_TEMPLATES: dict[str, tuple[np.ndarray, tuple[int, int, int]]] = {}
_NAMES: dict[str, str] = {}


def templates() -> dict[str, tuple[np.ndarray, tuple[int, int, int]]]:
    """slug -> (mask, brand RGB); each SVG is rasterised once per process."""
    if not _TEMPLATES:
        slugs = [s for name in brands.CLASS_NAMES for s in brands.class_slugs(name)]
        for slug in slugs:
            art = brands.load_artwork(slug)
            _TEMPLATES[slug] = (badge.render_mask(art.svg), art.rgb)
            _NAMES[slug] = brands.wordmark(art)
    return _TEMPLATES


def name_of(slug: str) -> str:
    """The name printed beside ``slug``'s logo in a lockup (``brands.wordmark``)."""
    templates()
    return _NAMES[slug]


def render_sample(sample: PlannedSample, cfg: SynthConfig) -> dict:
    """One Parquet row for a planned sample."""
    rng = np.random.default_rng([cfg.seed, 13, _SPLIT_CODE[sample.split], sample.index])
    name = brands.CLASS_NAMES[sample.clean_label]
    slugs = brands.class_slugs(name, cfg.classic_badges, cfg.unknown_vehicles)
    slug = slugs[rng.integers(len(slugs))]
    mask, rgb = templates()[slug]
    pixels, quality = badge.compose_badge(
        mask,
        rgb,
        size=cfg.image_size,
        difficulty=cfg.difficulty,
        min_crop_px=cfg.min_crop_px,
        max_crop_px=cfg.max_crop_px,
        rng=rng,
        max_aspect=cfg.max_aspect,
        studio=cfg.studio,
        surveillance=cfg.surveillance,
        wide_shots=cfg.wide_shots,
        wordmark=name_of(slug),
        wordmarks=cfg.wordmarks,
    )
    return {
        "image": badge.encode_image(pixels, cfg.image_format, quality),
        "label": sample.label,
        "label_name": brands.CLASS_NAMES[sample.label],
        "id": f"{sample.split}-{sample.index:06d}",
        "split": sample.split,
        "source_path": f"synth://{slug}/{sample.split}/{sample.index:06d}",
        "clean_label": sample.clean_label,
        "is_noisy": sample.label != sample.clean_label,
    }


def _render_chunk(chunk: list[PlannedSample], cfg: SynthConfig) -> list[dict]:
    return [render_sample(s, cfg) for s in chunk]


def iter_rows(cfg: SynthConfig, workers: int = 0, progress: bool = True) -> Iterator[dict]:
    """Render the whole plan in order, in ``workers`` processes (0: one per core)."""
    plan = make_plan(cfg)
    templates()  # rasterise before forking so workers inherit the masks
    yield from map_chunks(
        _render_chunk,
        plan,
        cfg,
        chunk=64,
        workers=workers or os.cpu_count() or 1,
        desc="rendering",
        unit="img",
        progress=progress,
    )


def manifest_params(cfg: SynthConfig) -> dict:
    """What the shards of ``cfg`` are made from, as their manifest records it: the generator,
    the artwork it draws (``brands.artwork_fingerprint``: shards rendered before a change of
    artwork are made again, not reused) and the config."""
    return {
        "generator": "logo_train.data.synth",
        "artwork": brands.artwork_fingerprint(),
        **asdict(cfg),
    }


def generate(
    cfg: SynthConfig,
    uri: str,
    *,
    rows_per_shard: int = 1000,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Manifest:
    """Render the embedded dataset into Parquet shards under ``uri`` and write its manifest."""
    prepare_output(uri, overwrite)
    counts = {s: dict.fromkeys(brands.CLASS_NAMES, 0) for s in SPLITS}
    clean_counts = {s: dict.fromkeys(brands.CLASS_NAMES, 0) for s in SPLITS}
    noisy = dict.fromkeys(SPLITS, 0)

    def counted(rows: Iterator[dict]) -> Iterator[dict]:
        for row in rows:
            counts[row["split"]][row["label_name"]] += 1
            clean_counts[row["split"]][brands.CLASS_NAMES[row["clean_label"]]] += 1
            noisy[row["split"]] += int(row["is_noisy"])
            yield row

    files, _ = write_splits(
        uri,
        counted(iter_rows(cfg, workers, progress)),
        with_truth=True,
        rows_per_shard=rows_per_shard,
    )
    manifest = Manifest(
        source="synth",
        classes=list(brands.CLASS_NAMES),
        counts=counts,
        files=files,
        params=manifest_params(cfg),
        has_truth=True,
        noisy_counts=noisy,
        clean_counts=clean_counts,
        files_seen=sum(sum(c.values()) for c in counts.values()),
    )
    write_manifest(uri, manifest)
    log.info("wrote %d rows to %s", manifest.rows, uri)
    return manifest
