"""logo-train predict / export: a model a user can point at files, folders and shards."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image
from torch import nn

from logo_train import checkpoint as ckpt
from logo_train.cli import main as cli
from logo_train.config import load_config
from logo_train.data.augment import TransformSpec, eval_inputs, eval_spec
from logo_train.data.prepare import prepare_data
from logo_train.data.shards import read_split
from logo_train.evaluate import predict as bench_predict
from logo_train.exported import MODEL_JSON, MODEL_ONNX, ModelError, export_model, load_exported
from logo_train.models import build_model, normalisation
from logo_train.predict import collect_inputs, predict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [
            f"output_dir={tmp}",
            "data.synth.images_per_class=8",
            "data.synth.imbalance_ratio=2",
            "data.synth.val_per_class=1",
            "data.synth.test_per_class=3",
            "data.workers=1",
        ],
    )
    uri, manifest, _ = prepare_data(cfg, progress=False)
    return tmp, uri, manifest


@pytest.fixture(scope="module")
def checkpoint(shards):
    """A resnet10t checkpoint with a random (not zero) classifier: predictions vary by image."""
    tmp, _, manifest = shards
    torch.manual_seed(0)
    model = build_model("resnet10t", len(manifest.classes), 32)
    nn.init.normal_(model.get_classifier().weight, std=0.5)
    mean, std = normalisation(model)
    info = ckpt.ModelInfo("resnet10t", len(manifest.classes), 32, mean, std, manifest.classes)
    folder = tmp / "ckpt"
    ckpt.save(folder, info=info, model=model, epoch=1, best_metric=0.0, history=[])
    return folder


def _write_test_split(uri, root: Path) -> tuple[list[bytes], list[str]]:
    """The test split as <class>/<i>.png files; returns its images and class names in order."""
    table = read_split(uri, "test", ["image", "label_name"])
    images, names = table["image"].to_pylist(), table["label_name"].to_pylist()
    for i, (img, name) in enumerate(zip(images, names, strict=True)):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{i:04d}.png").write_bytes(img)
    return images, names


def test_files_get_the_benchmarks_predictions(local_ray, shards, checkpoint, tmp_path):
    """Same preprocessing end to end: files written out of the test split, predicted through
    Ray Data + ONNX Runtime, equal the benchmark's PyTorch predictions for those images."""
    _, uri, manifest = shards
    images, names = _write_test_split(uri, tmp_path / "crops")
    model, info = ckpt.load_model(checkpoint)
    spec = TransformSpec(32, tuple(info.mean), tuple(info.std))
    expected = bench_predict(model, images, spec, torch.device("cpu"), batch=16)
    assert len(set(expected.tolist())) > 1, "a model that predicts one class proves nothing"

    out = tmp_path / "preds.csv"
    summary = predict(checkpoint, [str(tmp_path / "crops")], out, top_k=3, progress=False)
    table = pacsv.read_csv(out)
    assert summary.seen == summary.predicted == table.num_rows == len(images)
    assert summary.rejected == 0
    by_path = dict(zip(table["path"].to_pylist(), table["label"].to_pylist(), strict=True))
    for i, name in enumerate(names):
        assert (
            by_path[str(tmp_path / "crops" / name / f"{i:04d}.png")]
            == (manifest.classes[expected[i]])
        )
    # top-k columns: top-1 is the label, probabilities fall, the labels came from class folders
    assert table["top1_label"].to_pylist() == table["label"].to_pylist()
    p = np.stack([table[f"top{j}_probability"].to_numpy() for j in (1, 2, 3)], 1)
    assert np.all(p[:, 0] >= p[:, 1]) and np.all(p[:, 1] >= p[:, 2]) and np.all(p <= 1)
    assert summary.labelled == len(images)
    accuracy = np.mean([manifest.classes[e] == n for e, n in zip(expected, names, strict=True)])
    assert summary.metrics["accuracy"] == pytest.approx(accuracy)
    # a batch too few to time says so, not "then 0 images/s"
    from dataclasses import replace

    from logo_train.predict import summary_lines

    line = summary_lines(replace(summary, images_per_s=0.0))[0]
    assert "too few batches to time a steady rate" in line and " 0 images/s" not in line
    assert f"{summary.images_per_s:.0f} images/s" in summary_lines(summary)[0] or (
        summary.images_per_s == 0
    )


def test_wide_crops_are_made_square_as_the_model_was_trained(
    local_ray, shards, checkpoint, tmp_path
):
    """``resize`` travels with the model (checkpoint -> model.json -> predict): a model
    trained with ``pad`` letterboxes 2:1 files in predict exactly as the benchmark does."""
    import cv2

    _, uri, _ = shards
    padded = tmp_path / "pad-ckpt"
    shutil.copytree(checkpoint, padded)
    meta = json.loads((padded / ckpt.MODEL_JSON).read_text())
    (padded / ckpt.MODEL_JSON).write_text(json.dumps({**meta, "resize": "pad"}))
    model, info = ckpt.load_model(padded)
    assert info.resize == "pad"
    wide = []
    for i, data in enumerate(read_split(uri, "test", ["image"])["image"].to_pylist()):
        bgr = cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), (64, 32))
        wide.append(cv2.imencode(".png", bgr)[1].tobytes())
        (tmp_path / "wide").mkdir(exist_ok=True)
        (tmp_path / "wide" / f"{i:04d}.png").write_bytes(wide[-1])
    as_padded = bench_predict(model, wide, eval_spec(info), torch.device("cpu"), batch=16)
    stretched = TransformSpec(32, tuple(info.mean), tuple(info.std), resize="stretch")
    as_stretched = bench_predict(model, wide, stretched, torch.device("cpu"), batch=16)
    assert (as_padded != as_stretched).any(), "the two modes must differ on wide crops"

    exported = export_model(padded, tmp_path / "model")
    assert json.loads((exported / MODEL_JSON).read_text())["resize"] == "pad"
    out = tmp_path / "preds.csv"
    summary = predict(exported, [str(tmp_path / "wide")], out, progress=False)
    assert summary.predicted == len(wide)
    table = pacsv.read_csv(out)
    labels = dict(zip(table["path"].to_pylist(), table["label"].to_pylist(), strict=True))
    got = [labels[str(tmp_path / "wide" / f"{i:04d}.png")] for i in range(len(wide))]
    classes = list(info.class_names)
    assert got == [classes[k] for k in as_padded]


def test_bad_inputs_are_counted_listed_and_never_crash(local_ray, shards, checkpoint, tmp_path):
    _, uri, _ = shards
    good = tmp_path / "mixed"
    images, _ = _write_test_split(uri, good)
    (good / "empty.png").write_bytes(b"")
    (good / "readme.txt").write_text("not an image")
    (good / "fake.jpg").write_bytes(b"not an image at all")
    (good / "truncated.png").write_bytes(images[0][: len(images[0]) // 2])
    jpeg = good / "cut.jpg"
    Image.new("RGB", (40, 30), (10, 200, 10)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:-40])
    big = good / "huge.png"
    Image.new("RGB", (300, 300), (200, 10, 10)).save(big)
    out = tmp_path / "preds.parquet"
    summary = predict(checkpoint, [str(good)], out, top_k=2, max_pixels=200 * 200, progress=False)
    rejected = pq.read_table(tmp_path / "preds.rejected.parquet").to_pylist()
    reasons = {Path(r["path"]).name: r["reason"] for r in rejected}
    assert reasons == {
        "empty.png": "empty_file",
        "readme.txt": "unsupported_extension",
        "fake.jpg": "not_an_image",
        "truncated.png": "corrupt",
        "cut.jpg": "corrupt",
        "huge.png": "too_large",
    }
    rows = pq.read_table(out)
    assert rows.num_rows == summary.predicted == len(images)
    assert summary.predicted + summary.rejected == summary.seen == len(images) + 6
    assert summary.reasons == {**{r: 1 for r in reasons.values()}, "corrupt": 2}
    assert rows.column_names[:4] == ["path", "true_label", "label", "probability"]
    assert "top2_label" in rows.column_names and "top3_label" not in rows.column_names


def test_the_exported_folder_alone_predicts(local_ray, shards, checkpoint, tmp_path):
    """Export, delete the checkpoint, predict from shards: the exported folder is enough."""
    tmp, uri, manifest = shards
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    exported = export_model(copy, tmp_path / "model", metrics={"macro_f1": 0.5})
    meta = json.loads((exported / MODEL_JSON).read_text())
    assert meta["class_names"] == manifest.classes and meta["image_size"] == 32
    assert meta["metrics"] == {"macro_f1": 0.5} and meta["onnx_max_abs_diff"] < 1e-3
    shutil.rmtree(copy)
    out = tmp_path / "from_shards.csv"
    summary = predict(exported, [uri], out, progress=False)
    assert summary.predicted == manifest.split_rows("test") == summary.labelled
    assert set(pacsv.read_csv(out)["true_label"].to_pylist()) <= set(manifest.classes)
    assert 0 <= summary.metrics["macro_f1"] <= 1


def summary_classes(out: Path) -> list[str]:
    return sorted(set(pacsv.read_csv(out)["true_label"].to_pylist()))


def test_predict_with_two_actors_keeps_every_row_once(local_ray, shards, checkpoint, tmp_path):
    _, uri, _ = shards
    images, _ = _write_test_split(uri, tmp_path / "crops")
    out = tmp_path / "preds.csv"
    summary = predict(
        checkpoint,
        [str(tmp_path / "crops")],
        out,
        actors=2,
        cpus_per_actor=0.5,
        batch_size=4,
        progress=False,
    )
    paths = pacsv.read_csv(out)["path"].to_pylist()
    assert len(paths) == len(set(paths)) == len(images) == summary.predicted
    # which actor gets which block is Ray's scheduling: the first actor up may take them all
    assert summary.actors_used in (1, 2)
    inputs = collect_inputs([str(tmp_path / "crops")], summary_classes(out))
    assert paths == [p for p, _ in inputs.files], "rows come back in input order"


def test_a_folder_out_is_written_by_ray_data_with_every_row_once(
    local_ray, shards, checkpoint, tmp_path
):
    """--out a folder URI: Ray Data writes part files (answers, rejected) and summary.json;
    the answers equal the one-file path's; a second run replaces the parts."""
    _, uri, _ = shards
    crops = tmp_path / "crops"
    images, _ = _write_test_split(uri, crops)
    (crops / "empty.png").write_bytes(b"")
    (crops / "notes.txt").write_text("not an image")
    one = predict(checkpoint, [str(crops)], tmp_path / "one.parquet", progress=False)
    expected = pq.read_table(tmp_path / "one.parquet").sort_by("path")

    folder = tmp_path / "preds"
    for fmt in ("parquet", "parquet", "csv"):  # twice: no stale part files
        summary = predict(
            checkpoint, [str(crops)], f"file://{folder}", out_format=fmt, progress=False
        )
        assert summary.written_by == "ray-data"
        parts = sorted((folder / "predictions").iterdir())
        assert parts and all(p.suffix == f".{fmt}" for p in parts)
        read = pq.read_table if fmt == "parquet" else pacsv.read_csv
        got = pa_concat([read(p) for p in parts]).sort_by("path")
        assert got.num_rows == summary.predicted == len(images) == expected.num_rows
        assert got["path"].to_pylist() == expected["path"].to_pylist()
        assert got["label"].to_pylist() == expected["label"].to_pylist()
        assert got.column_names == expected.column_names
        rejected = pa_concat([read(p) for p in sorted((folder / "rejected").iterdir())])
        assert sorted(rejected["reason"].to_pylist()) == ["empty_file", "unsupported_extension"]
        assert summary.seen == summary.predicted + summary.rejected == len(images) + 2
        saved = json.loads((folder / "summary.json").read_text())
        assert saved["predicted"] == summary.predicted and saved["reasons"] == summary.reasons
        assert saved["metrics"]["accuracy"] == pytest.approx(one.metrics["accuracy"])
        assert summary.actors_used == 1 and summary.start_seconds > 0

    with pytest.raises(ValueError, match=r"--out .*preds.txt: a file must end in .csv"):
        predict(checkpoint, [str(crops)], tmp_path / "preds.txt", progress=False)
    with pytest.raises(ValueError, match="--format 'json'"):
        predict(checkpoint, [str(crops)], folder, out_format="json", progress=False)


def test_the_actor_pool_is_sized_to_the_cluster(local_ray):
    from logo_train.predict import pool_size

    assert pool_size(0, 1.0, "cpu") == (1, 1)  # 2 CPUs: one for the model, one for decoding
    assert pool_size(0, 0.5, "cpu") == (1, 2)
    assert pool_size(2, 0.5, "cpu") == (2, 2)
    with pytest.raises(ValueError, match="asks for every CPU"):
        pool_size(2, 1.0, "cpu")
    with pytest.raises(ValueError, match="no GPU"):
        pool_size(0, 1.0, "cuda")


def pa_concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


def test_a_broken_model_folder_stops_before_any_work(shards, checkpoint, tmp_path):
    assert cli(["export", str(checkpoint), str(tmp_path / "model")]) == 0
    exported = tmp_path / "model"
    assert load_exported(exported).backbone == "resnet10t"
    assert cli(["export", str(checkpoint), str(tmp_path / "m2"), "--backbone", "swin_nano"]) == 2
    (exported / MODEL_ONNX).rename(tmp_path / "moved.onnx")
    with pytest.raises(ModelError, match=r"model\.onnx: missing"):
        load_exported(exported)
    # model.json of a 48 px model beside a 32 px ONNX file
    (tmp_path / "moved.onnx").rename(exported / MODEL_ONNX)
    meta = json.loads((exported / MODEL_JSON).read_text())
    (exported / MODEL_JSON).write_text(json.dumps({**meta, "image_size": 48}))
    with pytest.raises(ModelError, match=r"model\.onnx: expects input .* image_size 48"):
        load_exported(exported)
    (exported / MODEL_JSON).write_text(json.dumps({**meta, "resize": "squash"}))
    with pytest.raises(ModelError, match=r"model\.json: field 'resize' is 'squash'"):
        load_exported(exported)
    del meta["class_names"]
    (exported / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model\.json: missing field\(s\) \['class_names'\]"):
        load_exported(exported)
    # through the CLI: exit code 2, one line naming the file, no output written
    out = tmp_path / "preds.csv"
    assert cli(["predict", "--model", str(exported), "--out", str(out), str(tmp_path)]) == 2
    assert not out.exists()
    assert cli(["predict", "--model", str(tmp_path / "nope"), "--out", str(out), "x"]) == 2
    assert cli(["predict", "--model", str(checkpoint), "--out", str(tmp_path / "p.txt"), "x"]) == 2


def test_the_open_set_threshold_travels_with_the_model_and_can_be_turned_off(
    local_ray, shards, checkpoint, tmp_path
):
    """``model.json`` keeps the benchmark's temperature and threshold; ``predict`` answers
    ``unknown`` below it (the reason in its own column, the class it would have named kept),
    ``min_confidence=0`` turns it off."""
    from logo_train.calibration import softmax
    from logo_train.engine import logits_of

    _, uri, manifest = shards
    images, names = _write_test_split(uri, tmp_path / "crops")
    model, info = ckpt.load_model(checkpoint)
    spec = TransformSpec(32, tuple(info.mean), tuple(info.std))
    probs = softmax(logits_of(model, images, spec, torch.device("cpu"), 16), 2.0)
    top = probs.max(1)
    threshold = float(np.median(top))
    exported = export_model(
        checkpoint,
        tmp_path / "model",
        calibration={"temperature": 2.0, "min_confidence": threshold},
    )
    meta = json.loads((exported / MODEL_JSON).read_text())
    assert meta["temperature"] == 2.0 and meta["min_confidence"] == threshold
    assert meta["unknown_class"] == "unknown"

    out = tmp_path / "open.csv"
    summary = predict(exported, [str(tmp_path / "crops")], out, progress=False)
    table = pacsv.read_csv(out)
    by_path = {p: i for i, p in enumerate(table["path"].to_pylist())}
    rows = [by_path[str(tmp_path / "crops" / n / f"{i:04d}.png")] for i, n in enumerate(names)]
    label = np.array(table["label"].to_pylist(), dtype=object)[rows]
    top1 = np.array(table["top1_label"].to_pylist(), dtype=object)[rows]
    reason = np.array([r or "" for r in table["unknown_reason"].to_pylist()], dtype=object)[rows]
    prob = table["probability"].to_numpy()[rows]
    np.testing.assert_allclose(prob, top, atol=1e-4)  # probabilities at the model's temperature
    unsure = top < threshold
    assert 0 < unsure.sum() < len(top)
    assert (label[unsure] == "unknown").all()
    assert all(r.startswith("below min-confidence") for r in reason[unsure])
    sure = ~unsure & (top1 != "unknown")
    assert (label[sure] == top1[sure]).all() and (reason[sure] == "").all()
    assert (top1 == [manifest.classes[k] for k in probs.argmax(1)]).all()
    assert summary.metrics["answered"] == pytest.approx(np.mean(label != "unknown"))

    off = tmp_path / "off.csv"
    predict(exported, [str(tmp_path / "crops")], off, min_confidence=0.0, progress=False)
    t = pacsv.read_csv(off)
    assert [lab for lab, t1 in zip(t["label"].to_pylist(), t["top1_label"].to_pylist(),
            strict=True) if lab != t1] == []  # fmt: skip
    with pytest.raises(ValueError, match="min-confidence"):
        predict(exported, [str(tmp_path / "crops")], off, min_confidence=1.5, progress=False)


def test_export_and_the_model_argument_take_uris(shards, checkpoint, tmp_path):
    """``logo-train export`` and ``--model`` read checkpoints, run folders and exported folders
    at a URI, and export writes to one (tested through file://)."""
    from logo_train.exported import resolve_model

    uri = f"file://{checkpoint}"
    out = f"file://{tmp_path}/exported"
    assert cli(["export", uri, out]) == 0
    exported = load_exported(tmp_path / "exported")
    assert exported.backbone == "resnet10t" and exported.source_checkpoint == uri
    # a run folder at a URI whose benchmark.json names the checkpoint by URI
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    entry = {"backbone": "resnet10t", "label": "resnet10t", "checkpoint": uri, "samples": 3,
             "metrics": {"macro_f1": 0.5}, "train": {"best_val_macro_f1": 0.4}}  # fmt: skip
    (run / "report/benchmark.json").write_text(
        json.dumps({"backbones": [entry], "split": "test", "classes": []})
    )
    work = tmp_path / "work"
    resolved = resolve_model(f"file://{run}", work)
    assert resolved.checkpoint == uri and resolved.meta.metrics["macro_f1"] == 0.5
    assert resolved.described_as == f"run file://{run}: best backbone resnet10t"
    # an exported folder at a URI is copied next to the work folder: ONNX Runtime reads files
    again = resolve_model(out, tmp_path / "work2")
    assert Path(again.onnx_dir) == tmp_path / "work2/exported"
    assert (Path(again.onnx_dir) / MODEL_ONNX).read_bytes() == (
        tmp_path / "exported" / MODEL_ONNX
    ).read_bytes()
    with pytest.raises(ModelError, match="--model file://.*/nope: not found"):
        resolve_model(f"file://{tmp_path}/nope", work)


def test_a_model_with_two_views_exports_them_and_every_runtime_answers_alike(shards, tmp_path):
    """A checkpoint trained with ``model.test_views`` [1.0, 0.8]: ``load_model`` answers with the
    mean of both views, the export keeps them in the ONNX graph (its logits are the two-view
    logits, not the whole input's) and says so in model.json."""
    from logo_train.exported import onnx_session

    _, uri, manifest = shards
    torch.manual_seed(1)
    model = build_model("resnet10t", len(manifest.classes), 32)
    nn.init.normal_(model.get_classifier().weight, std=0.5)
    mean, std = normalisation(model)
    info = ckpt.ModelInfo(
        "resnet10t", len(manifest.classes), 32, mean, std, manifest.classes, test_views=[1.0, 0.8]
    )
    folder = tmp_path / "ckpt"
    ckpt.save(folder, info=info, model=model, epoch=1, best_metric=0.0, history=[])
    loaded, _ = ckpt.load_model(folder)
    out = export_model(folder, tmp_path / "exported")
    assert load_exported(out).test_views == [1.0, 0.8]
    images = read_split(uri, "test", ["image"])["image"].to_pylist()
    spec = eval_spec(info)
    x = torch.from_numpy(eval_inputs(images, spec))
    with torch.no_grad():
        two, one = loaded(x).numpy(), model.eval()(x).numpy()
    onnx = onnx_session(out / MODEL_ONNX, 1).run(["logits"], {"image": x.numpy()})[0]
    np.testing.assert_allclose(onnx, two, atol=1e-4)
    assert np.abs(two - one).max() > 1e-2
