"""The benchmark's numbers (a hand-computed case), ONNX Runtime vs PyTorch, and the report made
from benchmark.json alone."""

import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from logo_train import checkpoint as ckpt
from logo_train.cli import main
from logo_train.config import BenchmarkConfig
from logo_train.data import synth
from logo_train.data.augment import TransformSpec
from logo_train.evaluate import benchmark_checkpoint, count_flops, predict, quality
from logo_train.exported import export_onnx, onnx_agreement, onnx_session
from logo_train.models import build_model, normalisation
from logo_train.plots import PLOTS
from logo_train.report import (
    BENCHMARK_MD,
    BENCHMARK_PARQUET,
    COLUMNS,
    compute_words,
    markdown,
    rows,
)
from logo_train.results import best_entry, round_tolerance, selected_on
from logo_train.storage import write_json


class ByBrightness(torch.nn.Module):
    """Predicts class k for an image of grey level LEVELS[k]: a model whose answers are known."""

    def __init__(self):
        super().__init__()
        self.centres = torch.nn.Parameter(torch.tensor([-1.0, 0.0, 1.0]))

    def forward(self, x):
        return -((x.mean(dim=(1, 2, 3))[:, None] - self.centres) ** 2)


LEVELS = [0, 128, 255]  # normalised with mean = std = 0.5: about -1, 0, +1


def _png(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (level, level, level)).save(buf, format="PNG")
    return buf.getvalue()


def test_metrics_of_a_model_whose_predictions_are_known():
    spec = TransformSpec(8, (0.5,) * 3, (0.5,) * 3)
    # the model predicts these classes ...
    predicted = [0, 0, 1, 1, 1, 0]
    images = [_png(LEVELS[k]) for k in predicted]
    # ... and these are the true ones
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = predict(ByBrightness(), images, spec, torch.device("cpu"), batch=4)
    assert y_pred.tolist() == predicted

    q = quality(y_true, y_pred, ["a", "b", "c"])
    # by hand: class a P 2/3 R 2/3; b P 2/3 R 1; c never predicted right: 0
    f1 = [2 / 3, 0.8, 0.0]
    assert q["metrics"]["accuracy"] == pytest.approx(4 / 6)
    assert q["metrics"]["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert q["metrics"]["macro_precision"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert q["metrics"]["macro_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert q["metrics"]["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert [pc["f1"] for pc in q["per_class"]] == pytest.approx(f1)
    assert [pc["support"] for pc in q["per_class"]] == [3, 2, 1]
    assert q["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_flop_counter_on_a_layer_counted_by_hand():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    assert count_flops(model, 8) == 2 * 3 * 8 * 8 * 5  # one multiply-add = 2 FLOPs


def _random_head(model):
    """build_model zero-initialises the classifier; random weights make the logits differ."""
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)
    return model.eval()


def test_onnx_runtime_agrees_with_pytorch(tmp_path):
    torch.manual_seed(0)
    model = _random_head(build_model("resnet10t", 7, 32))
    path = export_onnx(model, 32, tmp_path / "m.onnx")
    session = onnx_session(path, threads=1)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32), dtype=np.float32)
    check = onnx_agreement(model, session, x, tolerance=1e-3)
    assert check["matches"] and check["max_abs_diff"] < 1e-3
    assert check["prediction_agreement"] == 1.0
    # the check can fail: a different model's logits do not match
    other = _random_head(build_model("resnet10t", 7, 32))
    assert not onnx_agreement(other, session, x, tolerance=1e-3)["matches"]


@pytest.fixture(scope="module")
def benchmark_data(tmp_path_factory):
    """benchmark.json of two tiny random-init checkpoints on tiny shards."""
    from logo_train.config import SynthConfig

    root = tmp_path_factory.mktemp("bench")
    tiny = SynthConfig(
        image_size=32,
        images_per_class=6,
        imbalance_ratio=3.0,
        val_per_class=1,
        test_per_class=2,
        seed=5,
    )
    uri = str(root / "shards")
    manifest = synth.generate(tiny, uri, rows_per_shard=100, workers=1, progress=False)
    cfg = BenchmarkConfig(latency_runs=5, warmup_runs=1, throughput_batch=4, throughput_runs=2)
    entries = []
    for i, backbone in enumerate(["resnet10t", "mobilenetv2_050"]):
        torch.manual_seed(i)
        model = _random_head(build_model(backbone, len(manifest.classes), 32))
        mean, std = normalisation(model)
        info = ckpt.ModelInfo(
            backbone, len(manifest.classes), 32, list(mean), list(std), list(manifest.classes)
        )
        history = [
            {
                "epoch": e,
                "train_loss": 3.0 - e / 10,
                "val_loss": 3.2 - e / 20,
                "val_macro_f1": 0.01 * e,
            }
            for e in (1, 2, 3)
        ]
        ckpt.save(
            root / backbone, info=info, model=model, epoch=3, best_metric=0.03, history=history
        )
        entries.append(benchmark_checkpoint(str(root / backbone), uri, cfg, device="cpu"))
    data = {
        "run": "tiny",
        "created": "now",
        "split": "test",
        "shards": uri,
        "benchmark_config": {"warmup_runs": 1, "latency_runs": 5},
        "classes": list(manifest.classes),
        "train_counts": [manifest.counts["train"][c] for c in manifest.classes],
        "backbones": entries,
    }
    write_json(root / "run" / "report" / "benchmark.json", data)
    return data, root, manifest


def test_benchmark_entry_is_complete_and_consistent(benchmark_data):
    data, _, manifest = benchmark_data
    n = len(manifest.classes)
    for e in data["backbones"]:
        assert e["samples"] == manifest.split_rows("test") == np.asarray(e["confusion"]).sum()
        assert np.asarray(e["confusion"]).shape == (n, n)
        per_class_support = [pc["support"] for pc in e["per_class"]]
        assert per_class_support == np.asarray(e["confusion"]).sum(axis=1).tolist()
        assert e["params"] > 1e5 and e["flops"] > e["params"]  # every weight used >= once
        assert 0 < e["eager"]["latency_ms_p50"] <= e["eager"]["latency_ms_p95"]
        assert e["eager"]["throughput_images_per_s"] > 0
        assert e["onnx"]["matches"], e["onnx"]["max_abs_diff"]
        assert [h["epoch"] for h in e["history"]] == [1, 2, 3]
        # calibration fitted on validation: one image per class there
        c = e["calibration"]
        assert c["val"]["images"] == manifest.split_rows("val") and c["temperature"] > 0
        assert sum(c["val"]["reliability_after"]["count"]) == manifest.split_rows("val")
        # the threshold is a top probability of the shifted validation views (the training
        # augmentation, benchmark.open_set_passes passes), capped (0 when nothing is right)
        assert c["fitted_on"] == "shifted validation" and c["passes"] == 3
        assert c["fit"]["images"] == 3 * manifest.split_rows("val")
        assert 0 <= c["min_confidence"] == min(c["uncapped"], c["maximum"]) <= 0.55
        assert 0 <= c["test"]["answered"] <= 1 and 0 <= c["test"]["right_kept"] <= 1


def test_report_is_made_from_the_json_alone_and_matches_it(benchmark_data, capsys):
    data, root, _ = benchmark_data
    run_dir = root / "run"
    assert main(["report", str(run_dir)]) == 0
    folder = run_dir / "report"
    for name in [BENCHMARK_MD, BENCHMARK_PARQUET, *PLOTS.values()]:
        assert (folder / name).stat().st_size > 0, name

    # the markdown table's cells are the JSON's numbers, column by column
    text = (folder / BENCHMARK_MD).read_text()
    head = "| " + " | ".join(name for name, _, _ in COLUMNS) + " |"
    lines = text.splitlines()
    start = lines.index(head)
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2 :][:2]]
    for cells, entry in zip(table, data["backbones"], strict=True):
        for cell, (name, get, _) in zip(cells, COLUMNS, strict=True):
            value = get(entry)
            if isinstance(value, str):
                assert cell == value
            elif math.isnan(value):  # no training record here (bare checkpoints): a dash
                assert cell == "–", name
            else:
                decimals = len(cell.split(".")[1]) if "." in cell else 0
                assert float(cell) == pytest.approx(value, abs=0.51 * 10**-decimals), name
    assert rows(data)[0]["macro F1"] == data["backbones"][0]["metrics"]["macro_f1"]
    parquet = pq.read_table(folder / BENCHMARK_PARQUET).to_pylist()
    assert json.dumps(parquet) == json.dumps(rows(data))  # NaN ('–') equal to NaN
    best = max(data["backbones"], key=lambda e: e["metrics"]["macro_f1"])
    assert f"**Best backbone: {best['backbone']}**" in text
    chosen = best_entry(data)["calibration"]
    assert "## Calibration and the open-set answer" in text
    assert f"**{chosen['val']['ece_after']:.4f}** after" in text
    assert f"threshold, {chosen['min_confidence']:.3f}" in text
    assert "report folder" in capsys.readouterr().out


def test_the_best_backbone_is_chosen_on_validation_not_test(benchmark_data):
    data, _, _ = benchmark_data
    by_test = sorted(data["backbones"], key=lambda e: e["metrics"]["macro_f1"])
    on_val = json.loads(json.dumps(data))
    for e in on_val["backbones"]:  # validation ranks the test split's worst first
        worst = e["backbone"] == by_test[0]["backbone"]
        e["train"] = {"best_val_macro_f1": 0.9 if worst else 0.1}
    assert selected_on(on_val) == "val" and selected_on(data) == "test"
    assert best_entry(on_val)["backbone"] == by_test[0]["backbone"]
    text = markdown(on_val)
    assert f"**Best backbone: {by_test[0]['backbone']}** (chosen on val macro-F1 0.9000" in text


def test_the_cleaning_round_is_handed_over_unless_validation_says_it_is_worse(benchmark_data):
    """Of the backbone chosen on validation, the latest round within
    ``benchmark.round_within_se`` standard errors of its best round: at 0.936 on 280 images one
    standard error is sqrt(0.936 x 0.064 / 280) = 0.0146, so a cleaning round 0.013 under
    round 1 is handed over, 0.016 under is not; at 0 standard errors, or with 2,800 validation
    images (0.0046), round 1 is."""
    data, _, _ = benchmark_data
    first, other = (json.loads(json.dumps(e)) for e in data["backbones"][:2])
    second = dict(json.loads(json.dumps(first)), round=2, label=f"{first['backbone']}-round2")
    first["round"] = other["round"] = 1
    first["train"] = {"best_val_macro_f1": 0.936}
    other["train"] = {"best_val_macro_f1": 0.5}
    data = dict(data, backbones=[first, other, second])
    assert round_tolerance(
        dict(data, val_images=280, benchmark_config={"round_within_se": 1.0}), 0.936
    ) == pytest.approx(0.01463, abs=1e-5)
    cases = (
        (0.013, 1.0, 280, 2),
        (0.016, 1.0, 280, 1),
        (0.013, 0.0, 280, 1),
        (0.013, 1.0, 2800, 1),
    )
    for drop, within, images, handed in cases:
        second["train"] = {"best_val_macro_f1": 0.936 - drop}
        data["benchmark_config"] = dict(data["benchmark_config"], round_within_se=within)
        data["val_images"] = images
        assert best_entry(data)["round"] == handed, (drop, within, images)
    second["train"] = {"best_val_macro_f1": 0.95}  # better on validation: handed at any setting
    assert best_entry(data)["round"] == 2
    data["val_images"] = 280
    second["train"] = {"best_val_macro_f1": 0.923}
    text = markdown(data)
    assert f"{first['backbone']}-round2** (chosen on val macro-F1 0.9230, within 1 standard" in text
    assert "0.9360 (0.0146 on 280 validation images, `benchmark.round_within_se`)" in text
    del data["val_images"]  # a benchmark.json from before the rule: the best round on validation
    assert best_entry(data)["round"] == 1


def test_report_without_onnx_shows_a_dash_and_bad_path_errors(benchmark_data, tmp_path, capsys):
    data, _, _ = benchmark_data
    no_onnx = json.loads(json.dumps(data))
    for e in no_onnx["backbones"]:
        e["onnx"] = None
    assert math.isnan(rows(no_onnx)[0]["ONNX Runtime p50 (ms, batch 1)"])
    assert "| – |" in markdown(no_onnx)
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no benchmark.json" in capsys.readouterr().err


def test_the_benchmark_line_names_a_round_two_row_as_the_table_does(benchmark_data):
    from logo_train.evaluate import summary_line

    data, _, _ = benchmark_data
    entry = dict(data["backbones"][0], label=f"{data['backbones'][0]['backbone']}-round2")
    assert summary_line(entry).startswith(f"{entry['backbone']}-round2 ")
    plain = {k: v for k, v in data["backbones"][0].items() if k != "label"}
    assert summary_line(plain).startswith(f"{plain['backbone']} ")


@pytest.mark.parametrize("best", ["resnet10t", "mobilenetv2_050"])
def test_the_report_lists_the_cleaned_labels_even_when_another_backbone_is_best(tmp_path, best):
    """A cleaning round on resnet10t: the report's suspected-label list is that round's list
    (with what was done to each label), whichever backbone validation chose."""
    from types import SimpleNamespace

    from logo_train.evaluate import copy_suspected
    from logo_train.layout import RunLayout

    layout = RunLayout(str(tmp_path / "run"))
    for backbone in ("resnet10t", "mobilenetv2_050"):
        (tmp_path / f"run/audit/{backbone}").mkdir(parents=True)
        (tmp_path / f"run/audit/{backbone}/suspected_labels.parquet").write_bytes(backbone.encode())
    (tmp_path / "run/clean/resnet10t/round2").mkdir(parents=True)
    (tmp_path / "run/clean/resnet10t/round2/cleaning.parquet").write_bytes(b"round 2 actions")
    score = {"resnet10t": 0.5, "mobilenetv2_050": 0.5}
    score[best] = 0.9
    data = {
        "backbones": [
            {"backbone": b, "round": r, "train": {"best_val_macro_f1": score[b] - (r - 1) / 10}}
            for b, r in (("resnet10t", 1), ("mobilenetv2_050", 1), ("resnet10t", 2))
        ]
    }
    copy_suspected(SimpleNamespace(layout=layout), data)
    assert (tmp_path / "run/report/suspected_labels.parquet").read_bytes() == b"round 2 actions"
    (tmp_path / "run/clean").rename(tmp_path / "run/no-clean")
    copy_suspected(SimpleNamespace(layout=layout), {"backbones": data["backbones"][:2]})
    assert (tmp_path / "run/report/suspected_labels.parquet").read_bytes() == best.encode()


def test_the_report_says_whether_the_families_trained_at_equal_compute(benchmark_data):
    """Training images (steps x batch) are the compute the families are compared at: the
    report names the count when every random-init family of round 1 saw the same number,
    lists them when not, and leaves out the pretrained backbone and the cleaning round."""
    data, _, _ = benchmark_data
    runs = json.loads(json.dumps(data))
    for e in runs["backbones"]:
        e["train"] = {"best_val_macro_f1": 0.5, "epochs": 8, "images": 44_032}
    pretrained = dict(runs["backbones"][0], backbone="efficientnet_lite0", pretrained="package")
    pretrained["train"] = {"best_val_macro_f1": 0.9, "images": 16_128}
    round2 = dict(runs["backbones"][0], label="resnet10t-round2", round=2)
    round2["train"] = {"best_val_macro_f1": 0.6, "images": 999}
    runs["backbones"] += [pretrained, round2]
    words = compute_words(runs["backbones"])
    assert words == (
        "The 2 families from random init trained at **equal compute**: 44,032 training images each."
    )
    text = markdown(runs)
    assert words in text
    cells = [line for line in text.splitlines() if line.startswith("| resnet10t |")]
    assert " 44.0 |" in cells[0]  # the 'training images (k)' column
    runs["backbones"][1]["train"]["images"] = 55_040
    assert "**unequal** compute (training images: resnet10t 44,032, mobilenetv2_050 55,040)" in (
        compute_words(runs["backbones"])
    )
    assert compute_words(data["backbones"]) == ""  # bare checkpoints: no training record
