"""The embedded dataset: classes, imbalance profile, label noise, determinism, distinct logos."""

from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from logo_train.data import badge, brands, synth
from logo_train.data.augment import decode_image
from logo_train.data.shards import read_manifest, read_split, shard_schema

ROOT = Path(__file__).resolve().parents[1]


def test_28_classes_with_unknown_and_real_artwork():
    assert len(brands.CLASS_NAMES) == 28
    assert "unknown" in brands.CLASS_NAMES
    slugs = [brands.class_slugs(c)[0] for c in brands.CLASS_NAMES if c != "unknown"]
    assert len(set(slugs)) == 27
    art = brands.load_artwork("bmw")
    assert art.svg.startswith("<svg") and len(art.hex_colour) == 6


def test_every_class_renders_a_different_logo():
    masks = synth.templates()
    names = [c for c in brands.CLASS_NAMES if c != "unknown"]
    small = {
        c: cv2.resize(masks[brands.class_slugs(c)[0]][0], (32, 32), interpolation=cv2.INTER_AREA)
        for c in names
    }
    for c in names:
        assert small[c].mean() > 0.03, f"{c} renders (almost) empty"
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = np.abs(small[a] - small[b]).mean()
            assert diff > 0.05, f"{a} and {b} render nearly the same mask ({diff:.3f})"
    # the unknown class draws from many non-vehicle icons and other makers' badges, none of
    # them one of the 27 brands (nor one of their classic badges)
    assert len(brands.UNKNOWN_NON_VEHICLE) >= 20 and len(brands.UNKNOWN_VEHICLE) >= 15
    known = set(brands.BRAND_SLUGS.values()) | set(brands.CLASSIC_SVG)
    assert not set(brands.UNKNOWN_SLUGS) & known
    # the makers the real development set's outside photos show are never rendered
    held_out = {"astonmartin", "bentley", "cadillac", "ferrari", "lamborghini", "maserati",
                "mini", "rollsroyce"}  # fmt: skip
    assert not set(brands.UNKNOWN_SLUGS) & held_out


def test_classic_badges_render_beside_the_current_artwork():
    masks = synth.templates()
    for name, classics in brands.CLASSIC_BADGES.items():
        slugs = brands.class_slugs(name)
        assert slugs == (brands.BRAND_SLUGS[name], *classics)
        current = cv2.resize(masks[slugs[0]][0], (32, 32), interpolation=cv2.INTER_AREA)
        for slug in classics:
            mask, rgb = masks[slug]
            assert rgb == masks[slugs[0]][1], f"{slug} takes its brand's colour"
            small = cv2.resize(mask, (32, 32), interpolation=cv2.INTER_AREA)
            assert small.mean() > 0.1, f"{slug} renders (almost) empty"
            assert np.abs(small - current).mean() > 0.05, f"{slug} is the current artwork"
    # a class draws each of its artworks: Citroen's renders are not all of one template
    chevrons = synth.templates()["citroen-chevrons"][0]
    assert chevrons.shape[1] > chevrons.shape[0]  # wider than tall, unlike the 2022 oval


def test_surveillance_crops_are_grey_small_and_soft():
    rng = np.random.default_rng(0)
    colour = np.zeros((64, 64, 3), np.float32)
    colour[:, :32] = (200, 30, 30)
    colour[:, 32:] = (20, 40, 220)
    colour[::8] = 255  # fine detail that a 12-28 px camera cannot keep
    out = badge._surveillance(colour.copy(), np.random.default_rng(1))
    spread = np.abs(out - out.mean(axis=2, keepdims=True)).mean()
    assert spread < 0.3 * np.abs(colour - colour.mean(axis=2, keepdims=True)).mean()
    rows = np.abs(np.diff(out, axis=0)).mean()
    assert rows < 0.5 * np.abs(np.diff(colour, axis=0)).mean()
    again = badge._surveillance(colour.copy(), np.random.default_rng(1))
    assert np.array_equal(out, again)
    assert badge._studio(40, 60, rng).mean() > 190


def test_lookalike_pairs_are_a_perfect_matching():
    partner = brands.partner_index()
    assert all(partner[partner[i]] == i and partner[i] != i for i in range(len(partner)))


def test_train_counts_follow_the_long_tail_profile(tiny_synth):
    counts = synth.train_counts(tiny_synth)
    assert len(counts) == 28
    assert max(counts) == tiny_synth.images_per_class
    assert min(counts) == round(tiny_synth.images_per_class / tiny_synth.imbalance_ratio)
    expected = [
        round(60 * 6.0 ** (-r / 27)) for r in range(28)
    ]  # exponential decay from head to tail
    assert sorted(counts, reverse=True) == expected
    balanced = synth.train_counts(replace(tiny_synth, imbalance_ratio=1.0))
    assert set(balanced) == {60}


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4])
@pytest.mark.parametrize("kind", ["symmetric", "pairs"])
def test_noise_rate_is_exact_and_truth_is_kept(tiny_synth, rate, kind):
    cfg = replace(tiny_synth, noise_rate=rate, noise_kind=kind)
    plan = synth.make_plan(cfg)
    train = [s for s in plan if s.split == "train"]
    flipped = [s for s in train if s.label != s.clean_label]
    assert abs(len(flipped) / len(train) - rate) <= 0.015
    # the true labels still follow the profile: noise never changes clean_label counts
    clean = Counter(s.clean_label for s in train)
    assert sorted(clean.values(), reverse=True) == sorted(synth.train_counts(cfg), reverse=True)
    if kind == "pairs":
        partner = brands.partner_index()
        assert all(s.label == partner[s.clean_label] for s in flipped)
    # val and test are clean and balanced
    for split, per_class in (("val", cfg.val_per_class), ("test", cfg.test_per_class)):
        rows = [s for s in plan if s.split == split]
        assert all(s.label == s.clean_label for s in rows)
        assert set(Counter(s.label for s in rows).values()) == {per_class}


def test_noisy_val_flag(tiny_synth):
    cfg = replace(tiny_synth, noisy_val=True, val_per_class=10, noise_rate=0.3)
    val = [s for s in synth.make_plan(cfg) if s.split == "val"]
    assert sum(s.label != s.clean_label for s in val) == round(0.3 * len(val))


def test_generate_writes_shards_with_truth(tiny_synth, tmp_path):
    manifest = synth.generate(
        tiny_synth, str(tmp_path), rows_per_shard=200, workers=2, progress=False
    )
    assert manifest.classes == list(brands.CLASS_NAMES)
    n_train = sum(synth.train_counts(tiny_synth))
    assert manifest.split_rows("train") == n_train
    assert manifest.split_rows("test") == 28 * 2
    assert manifest.noisy_counts["train"] == round(0.2 * n_train)
    assert manifest.imbalance_ratio(truth=True) == pytest.approx(60 / 10)
    # shards: rows_per_shard respected, schema as documented
    assert len(manifest.files["train"]) == -(-n_train // 200)
    first = pq.read_table(tmp_path / manifest.files["train"][0])
    assert first.schema.equals(shard_schema(with_truth=True))
    assert first.num_rows == 200
    table = read_split(str(tmp_path), "train")
    assert table.num_rows == n_train
    labels = np.array(table["label"].to_pylist())
    clean = np.array(table["clean_label"].to_pylist())
    assert (np.array(table["is_noisy"].to_pylist()) == (labels != clean)).all()
    names = table["label_name"].to_pylist()
    assert all(brands.CLASS_NAMES[lbl] == n for lbl, n in zip(labels, names, strict=True))
    # rows are shuffled, not sorted by class
    assert len(set(labels[:28].tolist())) > 5
    img = decode_image(table["image"][0].as_py())
    assert img.shape[0] == 32 and 32 <= img.shape[1] <= 64 and img.dtype == np.uint8
    assert read_manifest(str(tmp_path)).rows == manifest.rows


def test_generation_is_deterministic_per_seed(tiny_synth, tmp_path):
    cfg = replace(tiny_synth, images_per_class=10, imbalance_ratio=2.0)
    a = synth.generate(cfg, str(tmp_path / "a"), workers=1, progress=False)
    b = synth.generate(cfg, str(tmp_path / "b"), workers=2, progress=False)
    synth.generate(replace(cfg, seed=cfg.seed + 1), str(tmp_path / "c"), workers=2, progress=False)
    assert a.counts == b.counts
    for split in ("train", "val", "test"):
        ta, tb = read_split(str(tmp_path / "a"), split), read_split(str(tmp_path / "b"), split)
        assert ta.equals(tb), f"{split} differs between two runs of the same seed"
    tc = read_split(str(tmp_path / "c"), "train")
    assert tc["image"].to_pylist() != read_split(str(tmp_path / "a"), "train")["image"].to_pylist()


def test_difficulty_changes_the_images(tiny_synth):
    sample = synth.make_plan(tiny_synth)[0]
    easy = synth.render_sample(sample, replace(tiny_synth, difficulty=0.0))
    hard = synth.render_sample(sample, replace(tiny_synth, difficulty=1.0))
    assert easy["image"] != hard["image"]
    assert easy["label"] == hard["label"]


def test_wide_badges_get_detector_like_wide_crops(tiny_synth):
    """Crops are ``image_size`` tall and up to ``max_aspect`` times as wide; wide badges
    (wordmarks, ovals) get wide crops, and ``max_aspect=1`` keeps every crop square."""
    plan = [s for s in synth.make_plan(tiny_synth) if s.split == "train"][:150]

    def shapes(cfg):
        return [decode_image(synth.render_sample(s, cfg)["image"]).shape for s in plan]

    wide = shapes(replace(tiny_synth, max_aspect=2.0))
    assert all(h == 32 and 32 <= w <= 64 for h, w, _ in wide)
    assert 0.2 < np.mean([w > h for h, w, _ in wide]) < 0.8
    by_class: dict[str, list[float]] = {}
    for sample, (h, w, _) in zip(plan, wide, strict=True):
        by_class.setdefault(brands.CLASS_NAMES[sample.clean_label], []).append(w / h)
    masks = synth.templates()
    aspect = {c: masks[brands.class_slugs(c)[0]][0].shape for c in by_class if c != "unknown"}
    widest = max(aspect, key=lambda c: aspect[c][1] / aspect[c][0])
    roundest = min(aspect, key=lambda c: abs(aspect[c][1] / aspect[c][0] - 1))
    assert np.mean(by_class[widest]) > np.mean(by_class[roundest])
    assert all(h == w == 32 for h, w, _ in shapes(replace(tiny_synth, max_aspect=1.0)))


def test_wide_shots_show_the_badge_small_and_leave_other_data_unchanged(tiny_synth):
    """``wide_shots``: the badge covers a quarter to a half of the frame instead of most of it;
    at 0 (the profiles' default) the generator draws nothing for it (the data rendered before
    the option existed stays the same), and the label never depends on it."""
    template = synth.templates()["toyota"][0][..., None]

    def coverage(wide: bool) -> float:
        rng = np.random.default_rng(0)
        return float(np.mean([(badge._place(template, 64, 64, rng, 0.5, wide) > 0.5).mean()
                              for _ in range(20)]))  # fmt: skip

    close, wide = coverage(False), coverage(True)
    assert wide < 0.5 * close, (wide, close)
    sample = synth.make_plan(tiny_synth)[0]
    assert tiny_synth.wide_shots == 0.0
    default = synth.render_sample(sample, tiny_synth)
    assert synth.render_sample(sample, replace(tiny_synth, wide_shots=0.0)) == default
    always = synth.render_sample(sample, replace(tiny_synth, wide_shots=1.0))
    assert always["image"] != default["image"] and always["label"] == default["label"]


def test_a_lockup_puts_the_name_beside_the_logo(tiny_synth):
    """``wordmarks``: light-background crops may show the name in ASCII capitals below the
    logo or to its right; at 0 (the profiles' default) nothing is drawn for it."""
    template = synth.templates()["skoda"][0]
    h, w = template.shape
    rng = np.random.default_rng(0)
    sides = set()
    for _ in range(12):
        out = badge.lockup(template, "SKODA", rng)
        below = out.shape[0] > h
        assert below or out.shape[1] > w
        logo = out[:h, (out.shape[1] - w) // 2 :][:, :w] if below else out[:, :w]
        assert np.array_equal(logo, template)  # the logo itself untouched
        assert out.sum() > template.sum() * 1.05  # and letters inked beside it
        sides.add("below" if below else "right")
    assert sides == {"below", "right"}
    assert brands.wordmark(brands.load_artwork("skoda")) == "SKODA"  # from "ŠKODA"
    assert synth.name_of("peugeot-lion") == "PEUGEOT" and synth.name_of("redbull") == "RED BULL"
    sample = synth.make_plan(tiny_synth)[0]
    default = synth.render_sample(sample, tiny_synth)
    assert tiny_synth.wordmarks == 0.0
    assert synth.render_sample(sample, replace(tiny_synth, wordmarks=0.0)) == default
    studio = replace(tiny_synth, studio=1.0)
    named = synth.render_sample(sample, replace(studio, wordmarks=1.0))
    assert named["image"] != synth.render_sample(sample, studio)["image"]


def test_enamel_fills_what_the_outline_encloses():
    ring = np.zeros((60, 60), np.float32)
    cv2.circle(ring, (30, 30), 25, 1.0, 4)
    ring[22:40, 26:30] = 1.0  # a letter inside the ring
    regions = badge.enamel_regions(ring)
    assert regions[30, 12] == 1.0  # inside the ring, not inked
    assert regions[0, 0] == 0.0 and regions[30, 5] == 0.0  # outside / on the ring
    assert not (regions * (ring > 0.5)).any()  # never on the ink itself
    bar = np.zeros((20, 60), np.float32)
    bar[5:15, 5:55] = 1.0
    assert badge.enamel_regions(bar).sum() == 0  # nothing enclosed


def test_shards_of_other_artwork_are_made_again_not_reused(tmp_path, monkeypatch):
    """The manifest records the artwork the renderer drew; shards of the same config but other
    artwork (an older release of the package) are rendered again, not trained on."""
    from logo_train.config import load_config
    from logo_train.data.prepare import prepare_data

    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [f"output_dir={tmp_path}", "data.synth.image_size=32", "data.synth.images_per_class=3",
         "data.synth.imbalance_ratio=1", "data.synth.val_per_class=1",
         "data.synth.test_per_class=1", "data.workers=1"],
    )  # fmt: skip
    _, manifest, reused = prepare_data(cfg, progress=False)
    assert not reused and manifest.params["artwork"] == brands.artwork_fingerprint()
    assert prepare_data(cfg, progress=False)[2], "the same config and artwork: reused"
    monkeypatch.setitem(brands.CLASSIC_BADGES, "Peugeot", ())  # the artwork before the lion
    assert brands.artwork_fingerprint() != manifest.params["artwork"]
    _, again, reused = prepare_data(cfg, progress=False)
    assert not reused and again.params["artwork"] == brands.artwork_fingerprint()
    assert again.split_rows("train") == manifest.split_rows("train")
