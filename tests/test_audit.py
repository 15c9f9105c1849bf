"""The label audit: ranked table, contact sheet and summary from a checkpoint and shards."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from logo_train import checkpoint as ckpt
from logo_train.audit import audit, detection_metrics, score_batches
from logo_train.cli import main
from logo_train.data import synth
from logo_train.data.shards import read_split
from logo_train.models import TrustModel, build_model, normalisation


def test_detection_metrics_on_a_hand_computed_case():
    is_noisy = np.array([1, 0, 1, 0, 0, 0], bool)
    suspicion = np.array([0.9, 0.8, 0.1, 0.3, 0.2, 0.0])
    m = detection_metrics(is_noisy, suspicion)
    # k = 2: top-2 are samples 0 (flipped) and 1 (clean) -> precision 1/2
    assert m["k"] == 2 and m["precision_at_k"] == 0.5 and m["recall_at_k"] == 0.5
    # pairs (noisy, clean) ranked right: sample 0 beats all 4 clean; sample 2 beats only 1 (0.0)
    assert m["auroc"] == pytest.approx((4 + 1) / 8)
    assert np.isnan(detection_metrics(np.zeros(3, bool), np.arange(3.0))["auroc"])


def test_score_batches_gives_loss_margin_and_trust():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x  # the "images" are the logits

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    scores = score_batches(Fixed(), [(logits, torch.tensor([0, 2]))], torch.device("cpu"))
    assert not scores.has_trust
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]), reduction="none")
    assert scores.loss == pytest.approx(expected.numpy(), rel=1e-6)
    assert scores.margin.tolist() == [2.0, -2.0]
    assert scores.predicted.tolist() == [0, 1]
    assert scores.suspicion() == pytest.approx(scores.loss)


@pytest.fixture
def noisy_shards(tmp_path, tiny_synth):
    uri = str(tmp_path / "shards")
    manifest = synth.generate(tiny_synth, uri, rows_per_shard=100, workers=1, progress=False)
    return uri, manifest


def _checkpoint(directory, manifest, trust: bool, random_head: bool = False):
    torch.manual_seed(0)
    model = build_model("resnet10t", len(manifest.classes), 32)
    if random_head:  # the registry starts the classifier at zero: every row alike
        torch.nn.init.normal_(model.get_classifier().weight, std=0.5)
    mean, std = normalisation(model)
    info = ckpt.ModelInfo(
        backbone="resnet10t",
        num_classes=len(manifest.classes),
        image_size=32,
        mean=list(mean),
        std=list(std),
        class_names=list(manifest.classes),
    )
    head = TrustModel(model, len(manifest.classes), dim=8).trust_head if trust else None
    ckpt.save(
        directory, info=info, model=model, trust_head=head, epoch=1, best_metric=0.0, history=[]
    )
    return str(directory)


def test_audit_writes_a_ranked_table_sheet_and_summary(tmp_path, noisy_shards, capsys):
    uri, manifest = noisy_shards
    checkpoint = _checkpoint(tmp_path / "ckpt", manifest, trust=True)
    result = audit(checkpoint, uri, str(tmp_path / "audit"))
    table = pq.read_table(result.parquet)
    train = read_split(uri, "train", ["id", "is_noisy"])
    assert table.num_rows == result.rows == train.num_rows == manifest.split_rows("train")
    assert table["rank"].to_pylist() == list(range(1, table.num_rows + 1))
    trust = np.asarray(table["trust"])
    assert ((trust > 0) & (trust < 1)).all()
    assert (np.diff(trust) >= 0).all(), "rank 1 must be the least trusted"
    assert sorted(table["id"].to_pylist()) == sorted(train["id"].to_pylist())
    for column in ("source_path", "given_label", "predicted_label", "loss", "margin", "true_label"):
        assert column in table.column_names
    assert set(table["given_label"].to_pylist()) <= set(manifest.classes)
    assert sum(table["is_noisy"].to_pylist()) == result.flipped == manifest.noisy_counts["train"]
    assert result.suspected == int((trust < 0.5).sum())
    assert set(result.detection) == {"trust", "loss", "margin"}
    assert 0 <= result.detection["trust"]["auroc"] <= 1
    summary = json.loads((tmp_path / "audit/audit_summary.json").read_text())
    assert summary["rows"] == result.rows and summary["ranked_by"] == "trust"
    png = (tmp_path / "audit/suspected_labels.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "training labels scored, ranked by trust" in capsys.readouterr().out


def test_audit_without_trust_head_ranks_by_loss(tmp_path, noisy_shards):
    uri, manifest = noisy_shards
    checkpoint = _checkpoint(tmp_path / "ckpt", manifest, trust=False)
    result = audit(checkpoint, uri, str(tmp_path / "audit"), echo=None)
    table = pq.read_table(result.parquet)
    assert result.ranked_by == "loss" and "trust" not in result.detection
    assert np.isnan(np.asarray(table["trust"])).all()
    assert (np.diff(np.asarray(table["loss"])) <= 1e-6).all(), "rank 1 must have the top loss"


def test_a_bfloat16_audit_scores_as_float32_does_within_rounding(tmp_path, noisy_shards):
    """``train.audit_precision``: bfloat16 forward passes round the scores (they differ from
    float32's) but rank the rows as float32 does up to that rounding; the summary says which
    precision scored them."""
    uri, manifest = noisy_shards
    checkpoint = _checkpoint(tmp_path / "ckpt", manifest, trust=False, random_head=True)
    tables = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        audit(checkpoint, uri, str(out), precision=precision, echo=None)
        summary = json.loads((out / "audit_summary.json").read_text())
        assert summary["precision"] == precision
        tables[precision] = pq.read_table(out / "suspected_labels.parquet").sort_by("id")
    f32, bf16 = (np.asarray(tables[p]["loss"]) for p in ("float32", "bfloat16"))
    assert not np.array_equal(f32, bf16)  # bfloat16 really ran
    assert bf16 == pytest.approx(f32, rel=0.05, abs=0.05)
    ranks = [np.asarray(tables[p]["rank"], float) for p in ("float32", "bfloat16")]
    assert np.corrcoef(*ranks)[0, 1] > 0.99


def test_audit_cli_and_its_errors(tmp_path, noisy_shards, capsys):
    uri, manifest = noisy_shards
    checkpoint = _checkpoint(tmp_path / "run/checkpoint_000001", manifest, trust=True)
    args = ["audit", "--checkpoint", checkpoint, "--shards", uri, "--precision", "float32"]
    assert main(args) == 0
    assert (tmp_path / "run/audit/suspected_labels.parquet").is_file()
    assert json.loads((tmp_path / "run/audit/audit_summary.json").read_text())["precision"] == (
        "float32"
    )
    assert "ranked labels:" in capsys.readouterr().out
    assert main(["audit", "--checkpoint", str(tmp_path / "nope"), "--shards", uri]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    other = synth.generate(
        synth.SynthConfig(
            image_size=16, images_per_class=4, imbalance_ratio=1, val_per_class=0, test_per_class=0
        ),
        str(tmp_path / "other"),
        workers=1,
        progress=False,
    )
    info = json.loads((tmp_path / "run/checkpoint_000001/model.json").read_text())
    info["class_names"] = list(reversed(other.classes))
    (tmp_path / "run/checkpoint_000001/model.json").write_text(json.dumps(info))
    assert main(["audit", "--checkpoint", checkpoint, "--shards", str(tmp_path / "other")]) == 2
    assert "not the same label set" in capsys.readouterr().err


def test_auto_audits_in_float32_only_what_a_cleaning_round_acts_on():
    """``train.audit_precision: auto``: the audit the cleaning round acts on is scored in
    float32 (its plan is the float32 plan), every other audit as the CPU allows; an explicit
    precision holds for every audit. The cleaned backbone: ``train.clean.backbones``, else the
    best on validation, none with ``train.clean.mode: none``."""
    from types import SimpleNamespace

    from logo_train.audit import audit_precision, backbones_to_clean
    from logo_train.config import load_config

    quick = Path(__file__).resolve().parents[1] / "configs/quick.yaml"
    cfg = load_config(quick, [])
    models = [
        SimpleNamespace(backbone="resnet10t", best_val_macro_f1=0.7),
        SimpleNamespace(backbone="efficientnet_lite0", best_val_macro_f1=0.9),
    ]
    assert backbones_to_clean(cfg, models) == ["efficientnet_lite0"]
    chosen = load_config(
        quick, ["model.backbones=[resnet10t]", "train.clean.backbones=[resnet10t]"]
    )
    assert backbones_to_clean(chosen, models) == ["resnet10t"]
    assert backbones_to_clean(load_config(quick, ["train.clean.mode=none"]), models) == []
    assert cfg.train.audit_precision == "auto"
    assert audit_precision(cfg, "efficientnet_lite0", acted_on=True) == "float32"
    assert audit_precision(cfg, "efficientnet_lite0", acted_on=False) == "auto"
    forced = load_config(quick, ["train.audit_precision=bfloat16"])
    assert audit_precision(forced, "efficientnet_lite0", acted_on=True) == "bfloat16"
