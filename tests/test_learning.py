"""The main job learns: a short Ray Train run of the quick profile's recipe on the embedded task
must score far beyond chance on the clean test split. A broken path (labels detached from
images, a wrong normalisation between training and evaluation, a learning rate that never
reaches the optimizer) stays at chance, 1/28 = 0.036; with the labels shuffled
(``LOGO_TRAIN_LEARNING_OVERRIDES="data.synth.noise_rate=0.97"``) it scored 0.030 and failed."""

import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from logo_train.checkpoint import load_model
from logo_train.config import load_config
from logo_train.data.augment import eval_spec
from logo_train.data.prepare import prepare_data
from logo_train.data.shards import read_split
from logo_train.evaluate import predict
from logo_train.metrics import classification_metrics
from logo_train.train import train_stage

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
MIN_MACRO_F1 = 0.30
"""Chance is 0.036. Measured on this 2-core machine, 2026-12-07, 8 epochs (the quick profile's
families' own; ~41 s of training): 0.569. At 6 epochs the run ended mid-climb and moved with
the float order: 0.331 at 42150d7, 0.288 with AdamW's fused CPU kernel (b8a2614), under this
threshold. Shuffled labels (the module's docstring) scored 0.030 at 8 epochs and failed."""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_the_quick_recipe_learns_far_beyond_chance(local_ray, tmp_path):
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [
            f"output_dir={tmp_path}",
            "data.synth.images_per_class=150",  # 1,667 training images, 20% of them mislabelled
            "data.synth.difficulty=0.2",
            "data.workers=1",
            "model.backbones=[resnet10t]",
            "train.epochs=8",
            "tune.enabled=false",
            # the shuffled-labels check of the docstring
            *os.environ.get("LOGO_TRAIN_LEARNING_OVERRIDES", "").split(),
        ],
    )
    uri, manifest, _ = prepare_data(cfg, progress=False)
    (result,) = train_stage(cfg, uri, manifest, echo=lambda line: None)
    model, info = load_model(result.checkpoint)
    test = read_split(uri, "test", ["image", "clean_label"])
    spec = eval_spec(info)
    y_pred = predict(model, test["image"].to_pylist(), spec, torch.device("cpu"), batch=256)
    y_true = np.asarray(test["clean_label"].to_pylist())
    metrics = classification_metrics(y_true=y_true, y_pred=y_pred, num_classes=info.num_classes)
    print(f"clean-test macro-F1 {metrics['macro_f1']:.3f} in {result.seconds:.0f} s")
    assert metrics["macro_f1"] >= MIN_MACRO_F1, metrics


FINETUNE_MIN_MACRO_F1 = 0.5
"""The pretrained backbone's fine-tuning recipe on a small render set (measured: see below)."""
FINETUNE_MARGIN = 0.3
"""How far ImageNet weights must beat the same recipe from random init (measured: see below)."""


def _finetune_score(tmp_path, weights: str) -> float:
    from logo_train.local import evaluate_split, fit_local

    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [
            f"output_dir={tmp_path}",
            "data.synth.images_per_class=40",  # 1,120 training images, balanced, 64 px
            "data.synth.imbalance_ratio=1",
            "data.synth.val_per_class=2",
            "data.synth.test_per_class=6",
            "data.synth.difficulty=0.3",
            "data.synth.image_size=64",
            "data.workers=1",
            "model.backbones=[efficientnet_lite0]",
            "tune.proxy_backbone=",
            f"model.pretrained={{efficientnet_lite0: {weights}}}",
            *os.environ.get("LOGO_TRAIN_LEARNING_OVERRIDES", "").split(),
        ],
    )
    # the quick profile's fine-tuning recipe, at 64 px and 2 epochs to fit a test
    from dataclasses import replace

    cfg = cfg.for_backbone("efficientnet_lite0").with_train(epochs=2, batch_size=32)
    cfg = replace(cfg, model=replace(cfg.model, image_size=64))
    uri, manifest, _ = prepare_data(cfg, progress=False)
    fit = fit_local(cfg, "efficientnet_lite0", uri, manifest, loader_workers=0, echo=None)
    test = evaluate_split(fit.classifier, cfg, "efficientnet_lite0", uri, manifest, "test")
    return test["macro_f1"]


def test_imagenet_weights_beat_the_same_recipe_from_random_init(tmp_path):
    """Fine-tuning the packaged ImageNet weights against the very same recipe (frozen early
    stages included) from random init: the weights, not the recipe, make the difference."""
    pretrained = _finetune_score(tmp_path / "pretrained", "package")
    scratch = _finetune_score(tmp_path / "scratch", "none")
    print(f"clean-test macro-F1: ImageNet {pretrained:.3f}, random init {scratch:.3f}")
    assert pretrained >= FINETUNE_MIN_MACRO_F1
    assert pretrained >= scratch + FINETUNE_MARGIN
