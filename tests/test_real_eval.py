"""The real-photo score: an ImageFolder of real crops, matched to the run's classes by name,
scored top-1 / top-3 per class, with unknown folders and unreadable files listed."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from logo_train.data.augment import TransformSpec
from logo_train.real_eval import class_key, load_real_set, mistakes_sheet, score_real

CLASSES = ["Audi", "Mercedes-Benz", "Volvo", "unknown"]
COLOURS = {0: (220, 30, 30), 1: (30, 220, 30), 2: (30, 30, 220), 3: (128, 128, 128)}


class ColourModel(nn.Module):
    """Logits: how close an image's mean colour is to each class's colour (inputs in 0..1)."""

    def __init__(self):
        super().__init__()
        self.register_buffer(
            "colours", torch.tensor([COLOURS[i] for i in range(len(CLASSES))]).float() / 255
        )

    def forward(self, x):
        mean = x.mean((2, 3))
        return -torch.cdist(mean, self.colours) * 10


def _png(colour, size=(60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def real_root(tmp_path):
    """audi/ (2, one painted like a Volvo), MERCEDES_BENZ/ (2), volvo/ (1 + a broken file),
    Tesla/ (not a class of the run)."""
    root = tmp_path / "real"
    files = {
        "audi/a1.png": _png(COLOURS[0]),
        "audi/a2.png": _png(COLOURS[2]),  # looks like a Volvo: a top-1 mistake
        "MERCEDES_BENZ/m1.png": _png(COLOURS[1], (40, 60)),
        "MERCEDES_BENZ/sub/m2.png": _png(COLOURS[1]),
        "volvo/v1.png": _png(COLOURS[2]),
        "volvo/broken.jpg": b"not an image",
        "volvo/notes.txt": b"a text file",
        "Tesla/t1.png": _png((0, 0, 0)),
        "Tesla/t2.png": _png((0, 0, 0)),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_the_source_of_a_photo_is_its_subfolder_or_a_prefix_several_classes_share():
    from logo_train.real_eval import sources_of

    paths = [
        "BMW/phone/x.jpg",
        "Honda/cctv_0001.jpg",
        "BMW/cctv_0002.jpg",
        "Honda/IMG_0001.jpg",  # one class's naming habit, not a source
        "Chevrolet/Chevrolet_12.jpg",
        "Honda/0001_a.jpg",
        "Honda/x.jpg",
    ]
    assert sources_of(paths) == ["phone", "cctv", "cctv", "photos", "photos", "photos", "photos"]


def test_class_names_match_case_and_separators():
    assert class_key("MERCEDES_BENZ") == class_key("mercedes benz") == class_key("Mercedes-Benz")
    assert class_key("audi") != class_key("audi2")


def test_real_photos_are_matched_scored_and_the_rest_listed(real_root, tmp_path):
    real = load_real_set(real_root, CLASSES)
    assert len(real.images) == 5
    assert sorted(real.paths) == [
        "MERCEDES_BENZ/m1.png",
        "MERCEDES_BENZ/sub/m2.png",
        "audi/a1.png",
        "audi/a2.png",
        "volvo/v1.png",
    ]
    assert real.unknown_classes == {"Tesla": 2}
    assert sorted(r["path"] for r in real.rejected) == ["volvo/broken.jpg", "volvo/notes.txt"]
    assert {r["reason"] for r in real.rejected} >= {"unsupported_extension"}
    assert any("Tesla (2)" in line for line in real.lines())

    spec = TransformSpec(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    result = score_real(ColourModel(), real, spec, torch.device("cpu"), batch_size=2)
    assert result["images"] == 5
    assert result["top1"] == pytest.approx(4 / 5)
    assert result["top3"] == pytest.approx(1.0)  # Audi is second or third for the blue photo
    per_class = {c["class"]: c for c in result["per_class"]}
    assert per_class["Audi"]["top1"] == 0.5 and per_class["Audi"]["images"] == 2
    assert per_class["Mercedes-Benz"]["top1"] == 1.0 and per_class["Volvo"]["images"] == 1
    assert [m["path"] for m in result["mistakes"]] == ["audi/a2.png"]
    assert result["mistakes"][0]["predicted"][0] == "Volvo"
    json.dumps(result)  # goes into benchmark.json as it is
    png = mistakes_sheet(real, result, "colour model")
    assert png.startswith(b"\x89PNG") and np.asarray(Image.open(io.BytesIO(png))).size > 0


def test_a_real_set_without_a_known_class_is_refused_naming_the_field(tmp_path, real_root):
    with pytest.raises(ValueError, match="data.real_eval.*not a folder"):
        load_real_set(tmp_path / "missing", CLASSES)
    only_unknown = tmp_path / "other"
    (only_unknown / "Tesla").mkdir(parents=True)
    (only_unknown / "Tesla/t.png").write_bytes(_png((0, 0, 0)))
    with pytest.raises(ValueError, match="data.real_eval.*no photo of a class"):
        load_real_set(only_unknown, CLASSES)


def test_the_benchmark_scores_real_photos_and_the_report_shows_them(tmp_path):
    """benchmark_run with data.real_eval: every model gets a 'real' entry, its mistakes'
    contact sheet lands in the report folder, and the table and the report show them."""
    from logo_train import checkpoint as ckpt
    from logo_train.config import BenchmarkConfig, SynthConfig
    from logo_train.data import synth
    from logo_train.evaluate import benchmark_run
    from logo_train.models import build_model, normalisation
    from logo_train.report import markdown, rows
    from logo_train.storage import write_json

    tiny = SynthConfig(
        image_size=32, images_per_class=4, imbalance_ratio=2, val_per_class=1, test_per_class=1
    )
    uri = str(tmp_path / "shards")
    manifest = synth.generate(tiny, uri, rows_per_shard=100, workers=1, progress=False)
    classes = list(manifest.classes)
    real_root = tmp_path / "real"
    for name, colour in ((classes[0].upper(), (200, 0, 0)), (classes[1].lower(), (0, 0, 200))):
        (real_root / name).mkdir(parents=True)
        for i in range(3):
            (real_root / name / f"{i}.png").write_bytes(_png(colour))
    (real_root / "Not-A-Brand").mkdir()
    (real_root / "Not-A-Brand/x.png").write_bytes(_png((1, 2, 3)))
    outside = tmp_path / "outside"
    for folder, n in (("Lexus", 3), ("Mercedes-Benz", 2)):
        (outside / folder).mkdir(parents=True)
        for i in range(n):
            (outside / folder / f"{i}.png").write_bytes(_png((40 * i, 100, 30 * n)))
    (outside / "Lexus/notes.txt").write_text("not an image")
    torch.manual_seed(0)
    model = build_model("resnet10t", len(classes), 32)
    mean, std = normalisation(model)
    info = ckpt.ModelInfo("resnet10t", len(classes), 32, list(mean), list(std), classes)
    ckpt.save(tmp_path / "ck", info=info, model=model, epoch=1, best_metric=0.0, history=[])
    cfg = BenchmarkConfig(latency_runs=2, warmup_runs=1, throughput_batch=2, throughput_runs=1)
    cfg.onnx = False
    rows_in = [{"backbone": "resnet10t", "checkpoint": str(tmp_path / "ck"), "run_path": "",
                "best_val_macro_f1": 0.1}]  # fmt: skip
    report = tmp_path / "report"
    lines = []
    data = benchmark_run(
        rows_in, uri, cfg, run_name="real", on_ray=False, echo=lines.append,
        real_eval=str(real_root), real_outside=str(outside), out_uri=str(report),
    )  # fmt: skip
    real = data["backbones"][0]["real"]
    # the outside photos: each answered unknown or named, counted per folder, the text file listed
    out = data["backbones"][0]["outside"]
    assert out["images"] == 5 and set(out["per_folder"]) == {"Lexus", "Mercedes-Benz"}
    named = sum(out["named_instead"].values())
    assert round(out["answered_unknown"] * 5) + named == 5
    assert out["answered_unknown"] == pytest.approx(out["below_threshold"] + out["unknown_class"])
    assert any("5 photos of no class of the run (2 folders)" in line for line in lines)
    assert any("1 file(s) there not scored" in line for line in lines)
    assert 0 <= real["open_set"]["right_kept"] <= 1
    # per source (no subfolders, no prefixes here: one source) the same numbers as in all
    (source,) = real["per_source"]
    assert source["source"] == "photos" and source["images"] == 6
    assert (
        source["top1"] == real["top1"] and source["after_open_set"] == real["open_set"]["accuracy"]
    )
    assert real["images"] == 6 and 0 <= real["top1"] <= real["top3"] <= 1
    assert len(real["mistakes"]) == round(6 * (1 - real["top1"]))
    assert data["real_eval"]["unknown_classes"] == {"Not-A-Brand": 1}
    assert any("Not-A-Brand (1)" in line for line in lines)
    if real["mistakes"]:
        assert (report / "real_mistakes_resnet10t.png").is_file()
    write_json(report / "benchmark.json", data)
    assert rows(data)[0]["real photos top-1"] == real["top1"]
    text = markdown(data)
    assert "## Real photos" in text and "Not-A-Brand (1 files)" in text
    assert "| real photos top-1 | real photos top-3 |" in text
