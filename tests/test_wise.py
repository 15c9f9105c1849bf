"""WiSE-FT (``logo_train.wise``): the average of the fine-tuned and the starting weights,
applied once to a trained backbone's ``best/``, recorded in its ``result.json``."""

from pathlib import Path

import pytest
import torch

from logo_train import checkpoint as ckpt
from logo_train import wise
from logo_train.config import load_config
from logo_train.data.prepare import prepare_data
from logo_train.models import build_model, normalisation
from logo_train.storage import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]


def test_interpolate_mixes_floats_and_keeps_the_classifier_and_counters():
    tuned = {"a.w": torch.full((2,), 4.0), "head.w": torch.full((2,), 9.0),
             "bn.n": torch.tensor(7)}  # fmt: skip
    start = {"a.w": torch.zeros(2), "head.w": torch.zeros(2), "bn.n": torch.tensor(1)}
    out = wise.interpolate(tuned, start, 0.75, keep=("head.",))
    assert out["a.w"].tolist() == [3.0, 3.0]
    assert out["head.w"].tolist() == [9.0, 9.0] and out["bn.n"].item() == 7
    assert wise.interpolate(tuned, start, 1.0)["a.w"].tolist() == [4.0, 4.0]
    with pytest.raises(ValueError, match="differ in tensors"):
        wise.interpolate(tuned, {"a.w": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="train.wise_alpha"):
        wise.interpolate(tuned, start, 1.5)


def test_a_trained_backbone_is_averaged_once_and_says_so(tmp_path):
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [f"output_dir={tmp_path}", "data.synth.images_per_class=4",
         "data.synth.imbalance_ratio=1", "data.synth.val_per_class=1",
         "data.synth.test_per_class=1", "data.workers=1", "model.image_size=32",
         "data.synth.image_size=32", "train.wise_alpha=0.5", "train.wise_max_drop=1"],
    )  # fmt: skip
    uri, manifest, _ = prepare_data(cfg, progress=False)
    classes = len(manifest.classes)
    start = build_model("efficientnet_lite0", classes, 32, weights="package").state_dict()
    torch.manual_seed(0)
    tuned = build_model("efficientnet_lite0", classes, 32, weights="package")
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    mean, std = normalisation(tuned)
    info = ckpt.ModelInfo("efficientnet_lite0", classes, 32, mean, std, manifest.classes)
    run = tmp_path / "run" / "efficientnet_lite0"
    ckpt.save(run / "best", info=info, model=tuned, epoch=3, best_metric=0.9, history=[])
    write_json(run / "result.json", {"backbone": "efficientnet_lite0", "best_val_macro_f1": 0.9})

    done = wise.apply(cfg, "efficientnet_lite0", str(run), uri, manifest)
    assert done["alpha"] == 0.5 and done["val_macro_f1_before"] == 0.9 and done["kept"]
    assert 0 <= done["val_macro_f1"] <= 1
    result = read_json(run / "result.json")
    assert result["wise"] == done and result["best_val_macro_f1"] == done["val_macro_f1"]
    averaged = ckpt.load_state(run / "best")["model"]
    tuned_state = tuned.state_dict()
    name = "conv_stem.weight"
    assert torch.allclose(averaged[name], 0.5 * tuned_state[name] + 0.5 * start[name])
    assert torch.equal(averaged["classifier.weight"], tuned_state["classifier.weight"])

    again = wise.apply(cfg, "efficientnet_lite0", str(run), uri, manifest)  # a resumed run
    assert again == done and torch.equal(ckpt.load_state(run / "best")["model"][name],
                                         averaged[name])  # fmt: skip
    # the guard: an average that validates lower than allowed leaves the trained weights
    ckpt.save(run / "best", info=info, model=tuned, epoch=3, best_metric=1.0, history=[])
    write_json(run / "result.json", {"backbone": "efficientnet_lite0", "best_val_macro_f1": 1.0})
    strict = load_config(ROOT / "configs/quick.yaml", [f"output_dir={tmp_path}",
                         "train.wise_alpha=0.5", "train.wise_max_drop=0"])  # fmt: skip
    refused = wise.apply(strict, "efficientnet_lite0", str(run), uri, manifest)
    assert refused["kept"] is False and refused["val_macro_f1"] < 1.0
    assert read_json(run / "result.json")["best_val_macro_f1"] == 1.0
    assert torch.equal(ckpt.load_state(run / "best")["model"][name], tuned_state[name])

    # off, or a backbone trained from random init: nothing to average towards
    off = load_config(ROOT / "configs/quick.yaml", ["train.wise_alpha=1"])
    assert wise.apply(off, "efficientnet_lite0", str(run), uri, manifest) is None
    assert wise.apply(cfg, "resnet10t", str(run), uri, manifest) is None
