"""ImageFolder ingest: every bad input is converted or rejected with a reason, nothing is lost."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from logo_train.config import IngestConfig
from logo_train.data.ingest import IngestError, ingest
from logo_train.data.preview import summary_table
from logo_train.data.shards import read_split

RNG = np.random.default_rng(0)


def noise_image(w=24, h=16, mode="RGB") -> Image.Image:
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = RNG.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze() if channels == 1 else arr, mode)


def save(path: Path, img: Image.Image, fmt: str, **kw) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def all_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


@pytest.fixture
def messy_tree(tmp_path) -> tuple[Path, dict[str, str]]:
    """A train/val/test tree with every kind of bad input; returns it and the expected reasons."""
    root = tmp_path / "src"
    tr, va, te = root / "train", root / "val", root / "test"
    expected: dict[str, str] = {}  # relative path -> reason code ("" = accepted)

    def good(rel: str, fmt="JPEG") -> bytes:
        expected[rel] = ""
        return save(root / rel, noise_image(), fmt)

    good("train/Audi/good1.jpg")
    good("train/Audi/good2.png", "PNG")
    good("train/Audi/naïve café 1.jpg")  # non-ASCII and spaces
    good("train/Audi/legacy.bmp", "BMP")
    leaked = good("train/BMW/b1.jpg")
    good("train/BMW/b2.jpg")
    good("train/BMW/b3.jpg")
    good("val/Audi/v1.jpg")
    good("val/BMW/v2.jpg")
    good("test/Audi/t1.jpg")
    good("test/BMW/t2.jpg")

    # converted, not rejected
    save(tr / "Audi/gray.png", noise_image(mode="L"), "PNG")
    save(tr / "Audi/cmyk.jpg", noise_image().convert("CMYK"), "JPEG")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent
    save(tr / "Audi/rgba.png", rgba, "PNG")
    pal = noise_image().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    save(tr / "Audi/palette.png", pal, "PNG")
    g16 = Image.fromarray(np.full((6, 6), 65535, np.uint16))
    save(tr / "Audi/gray16.png", g16, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    save(tr / "Audi/rotated.jpg", noise_image(w=20, h=10), "JPEG", exif=exif)
    for rel in ("gray.png", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png", "rotated.jpg"):
        expected[f"train/Audi/{rel}"] = ""

    # rejected
    jpg = save(tr / "Audi/whole.jpg", noise_image(64, 64), "JPEG")
    (tr / "Audi/whole.jpg").unlink()
    (tr / "Audi/truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    expected["train/Audi/truncated.jpg"] = "corrupt"
    png = save(te / "BMW/whole.png", noise_image(64, 64), "PNG")
    (te / "BMW/whole.png").unlink()
    (te / "BMW/truncated.png").write_bytes(png[: int(len(png) * 0.6)])
    expected["test/BMW/truncated.png"] = "corrupt"
    (tr / "Audi/zero.jpg").write_bytes(b"")
    expected["train/Audi/zero.jpg"] = "empty_file"
    (tr / "Audi/readme.jpg").write_text("this is not a picture")
    expected["train/Audi/readme.jpg"] = "not_an_image"
    save(tr / "BMW/huge.png", Image.new("RGB", (300, 300)), "PNG")  # over max_pixels below
    expected["train/BMW/huge.png"] = "too_large"
    (tr / "BMW/labels.txt").write_text("BMW")
    expected["train/BMW/labels.txt"] = "unsupported_extension"
    os.symlink(tr / "BMW/does-not-exist.jpg", tr / "BMW/ghost.jpg")  # dangling, in the tree
    expected["train/BMW/ghost.jpg"] = "unreadable"
    (va / "BMW").mkdir(parents=True, exist_ok=True)
    (va / "BMW/leak.jpg").write_bytes(leaked)  # same bytes as a training image
    expected["val/BMW/leak.jpg"] = "duplicate"
    save(va / "Ghost/only-in-val.jpg", noise_image(), "JPEG")
    expected["val/Ghost/only-in-val.jpg"] = "class_not_in_train"
    save(tr / "loose.jpg", noise_image(), "JPEG")
    expected["train/loose.jpg"] = "outside_class_folder"
    save(root / "extra/stray.jpg", noise_image(), "JPEG")
    expected["extra/stray.jpg"] = "outside_split_folder"
    (tr / "Empty").mkdir()
    return root, expected


def test_every_bad_input_is_converted_or_rejected(messy_tree, tmp_path):
    root, expected = messy_tree
    out = tmp_path / "shards"
    cfg = IngestConfig(max_pixels=50_000)
    manifest = ingest(root, str(out), cfg, rows_per_shard=4, workers=2, progress=False)

    # nothing lost: every file on disk is a row or a listed rejection
    assert manifest.files_seen == all_files(root) == len(expected)
    assert manifest.rows + len(manifest.rejected) == manifest.files_seen
    got = {r["path"]: r["reason"] for r in manifest.rejected}
    want = {p: r for p, r in expected.items() if r}
    assert got == want
    assert all(r["detail"] for r in manifest.rejected)
    leak = next(r for r in manifest.rejected if r["path"] == "val/BMW/leak.jpg")
    assert "train/BMW/b1.jpg" in leak["detail"] and "leakage" in leak["detail"]

    assert manifest.classes == ["Audi", "BMW"]
    assert manifest.skipped_classes == [
        {"class": "Empty", "split": "train", "reason": "empty class folder"}
    ]
    rows = {
        split: {r["id"]: r for r in read_split(str(out), split).to_pylist()}
        for split in ("train", "val", "test")
    }
    accepted = {p for p, r in expected.items() if not r}
    assert {i for split in rows.values() for i in split} == accepted
    for split, by_id in rows.items():
        for row in by_id.values():
            assert row["split"] == split
            assert row["label_name"] == row["source_path"].split("/")[1]
            assert manifest.classes[row["label"]] == row["label_name"]
            img = Image.open(io.BytesIO(row["image"]))
            assert img.mode == "RGB", row["id"]

    train = rows["train"]

    def decoded(rel):
        return np.asarray(Image.open(io.BytesIO(train[rel]["image"])))

    # 8-bit RGB JPEG/PNG keep their bytes; the rest are converted to RGB PNG
    assert train["train/Audi/good1.jpg"]["image"] == (root / "train/Audi/good1.jpg").read_bytes()
    assert decoded("train/Audi/rotated.jpg").shape == (20, 10, 3)  # EXIF applied
    assert (decoded("train/Audi/rgba.png") == 255).all()  # transparent -> white
    assert (decoded("train/Audi/gray16.png") == 255).all()  # 16-bit max -> 8-bit max
    gray = decoded("train/Audi/gray.png")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert set(manifest.converted) >= {
        "exif_rotation",
        "L->RGB",
        "CMYK->RGB",
        "RGBA->RGB(alpha on white)",
        "BMP->PNG",
    }

    table = summary_table(manifest)
    for reason in set(want.values()):
        assert reason in table
    assert "val/BMW/leak.jpg" in table


def test_single_tree_is_split_stratified_without_leakage(tmp_path):
    root = tmp_path / "flat"
    sizes = {"Kia": 10, "Tata": 5, "Opel": 1}
    for name, n in sizes.items():
        for i in range(n):
            save(root / name / f"{i}.jpg", noise_image(), "JPEG")
    # the same bytes in two classes: the second copy is rejected before splitting
    (root / "Tata" / "copy.jpg").write_bytes((root / "Kia" / "0.jpg").read_bytes())
    cfg = IngestConfig(val_fraction=0.2, test_fraction=0.2, seed=1)
    manifest = ingest(root, str(tmp_path / "out"), cfg, workers=1, progress=False)
    assert manifest.params["detected_layout"] == "single"
    assert manifest.counts["train"] == {"Kia": 6, "Opel": 1, "Tata": 3}
    assert manifest.counts["val"] == {"Kia": 2, "Opel": 0, "Tata": 1}
    assert manifest.counts["test"] == {"Kia": 2, "Opel": 0, "Tata": 1}
    assert [r["reason"] for r in manifest.rejected] == ["duplicate"]
    ids = [
        i
        for s in ("train", "val", "test")
        for i in read_split(str(tmp_path / "out"), s)["id"].to_pylist()
    ]
    assert len(ids) == len(set(ids)) == 16


def test_missing_val_split_is_carved_from_train(tmp_path):
    root = tmp_path / "src"
    for i in range(10):
        save(root / "train" / "Kia" / f"{i}.jpg", noise_image(), "JPEG")
        save(root / "test" / "Kia" / f"t{i}.jpg", noise_image(), "JPEG")
    manifest = ingest(
        root, str(tmp_path / "out"), IngestConfig(val_fraction=0.3), workers=1, progress=False
    )
    assert manifest.counts["train"]["Kia"] == 7
    assert manifest.counts["val"]["Kia"] == 3
    assert manifest.counts["test"]["Kia"] == 10


def test_writes_to_a_filesystem_uri(tmp_path):
    root = tmp_path / "src"
    for i in range(3):
        save(root / "Kia" / f"{i}.png", noise_image(), "PNG")
    manifest = ingest(
        root,
        f"file://{tmp_path}/remote",
        IngestConfig(val_fraction=0, test_fraction=0),
        workers=1,
        progress=False,
    )
    assert manifest.rows == 3
    assert (tmp_path / "remote" / "manifest.json").is_file()
    assert (tmp_path / "remote" / "train-00000.parquet").is_file()


def test_structural_problems_stop_with_the_path(tmp_path):
    with pytest.raises(IngestError, match="not found: .*missing"):
        ingest(tmp_path / "missing", str(tmp_path / "o1"), IngestConfig(), progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"x")
    with pytest.raises(IngestError, match=f"no class folders under {flat}"):
        ingest(flat, str(tmp_path / "o2"), IngestConfig(), progress=False)
    junk = tmp_path / "junk"
    (junk / "Kia").mkdir(parents=True)
    (junk / "Kia" / "a.jpg").write_text("not an image")
    (junk / "Kia" / "b.jpg").write_bytes(b"")
    with pytest.raises(IngestError, match=f"no readable images under {junk}: 2 files seen"):
        ingest(junk, str(tmp_path / "o3"), IngestConfig(), workers=1, progress=False)


def test_refuses_to_overwrite_without_flag(tmp_path):
    root = tmp_path / "src"
    save(root / "Kia" / "0.jpg", noise_image(), "JPEG")
    cfg = IngestConfig(val_fraction=0, test_fraction=0)
    ingest(root, str(tmp_path / "out"), cfg, workers=1, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        ingest(root, str(tmp_path / "out"), cfg, workers=1, progress=False)
    assert (
        ingest(root, str(tmp_path / "out"), cfg, workers=1, overwrite=True, progress=False).rows
        == 1
    )


def test_overwrite_deletes_only_what_a_manifest_lists(tmp_path):
    root = tmp_path / "src"
    save(root / "Kia" / "0.jpg", noise_image(), "JPEG")
    cfg = IngestConfig(val_fraction=0, test_fraction=0)
    # a user's folder of Parquet files, no manifest: refused even with overwrite, nothing lost
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sales-2025.parquet").write_bytes(b"PAR1 their data")
    with pytest.raises(FileExistsError, match="has no manifest.json"):
        ingest(root, str(theirs), cfg, workers=1, overwrite=True, progress=False)
    assert (theirs / "sales-2025.parquet").read_bytes() == b"PAR1 their data"
    # our shards folder: overwrite replaces our files and leaves a user's file beside them
    out = tmp_path / "out"
    ingest(root, str(out), cfg, workers=1, progress=False)
    (out / "notes.parquet").write_bytes(b"keep me")
    ingest(root, str(out), cfg, workers=1, overwrite=True, progress=False)
    assert (out / "notes.parquet").read_bytes() == b"keep me"
    assert sorted(p.name for p in out.glob("train-*.parquet")) == ["train-00000.parquet"]


def test_links_out_of_the_root_are_rejected_not_followed(tmp_path):
    root = tmp_path / "src"
    save(root / "Kia" / "0.jpg", noise_image(), "JPEG")
    save(root / "Kia" / "1.jpg", noise_image(), "JPEG")
    secret = tmp_path / "elsewhere" / "private.jpg"
    save(secret, noise_image(), "JPEG")
    (root / "Kia" / "2.jpg").symlink_to(secret)
    (root / "Kia" / "3.jpg").symlink_to(root / "Kia" / "0.jpg")  # inside the root: followed
    cfg = IngestConfig(val_fraction=0, test_fraction=0)
    manifest = ingest(root, str(tmp_path / "out"), cfg, workers=1, progress=False)
    reasons = {r["path"]: r["reason"] for r in manifest.rejected}
    assert reasons["Kia/2.jpg"] == "outside_root"
    assert reasons["Kia/3.jpg"] == "duplicate"  # same bytes as 0.jpg
    assert manifest.rows == 2 and manifest.files_seen == 4


def test_stored_bytes_fast_path_keeps_plain_files_and_still_rejects_broken_ones(tmp_path):
    from logo_train.data.ingest import Reject, stored_bytes

    png = save(tmp_path / "a.png", noise_image(), "PNG")
    jpg = save(tmp_path / "a.jpg", noise_image(), "JPEG")
    for data in (png, jpg):  # plain 8-bit RGB: the original bytes, decoded or not
        assert stored_bytes(data, 10**6, full_decode=False) == data == stored_bytes(data, 10**6)
    rgba = save(tmp_path / "b.png", noise_image(mode="RGBA"), "PNG")
    assert stored_bytes(rgba, 10**6, full_decode=False) == stored_bytes(rgba, 10**6) != rgba
    for broken in (png[: len(png) // 2], jpg[: len(jpg) - 20]):
        with pytest.raises(Reject) as e:
            stored_bytes(broken, 10**6, full_decode=False)
        assert e.value.reason == "corrupt"
    with pytest.raises(Reject, match="over max_pixels"):
        stored_bytes(png, 100, full_decode=False)
