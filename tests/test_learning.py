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

from logo_train.bench import predict
from logo_train.checkpoint import load_model
from logo_train.config import load_config
from logo_train.data.augment import eval_spec
from logo_train.data.prepare import prepare_data
from logo_train.data.shards import read_split
from logo_train.metrics import classification_metrics
from logo_train.train import train_all

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
MIN_MACRO_F1 = 0.30
"""Measured 0.595 on this 2-core machine (83 s for the test); chance is 0.036."""


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
            "train.epochs=6",
            "tune.enabled=false",
            # the shuffled-labels check of the docstring
            *os.environ.get("LOGO_TRAIN_LEARNING_OVERRIDES", "").split(),
        ],
    )
    uri, manifest, _ = prepare_data(cfg, progress=False)
    (result,) = train_all(cfg, uri, manifest, echo=lambda line: None)
    model, info = load_model(result.checkpoint)
    test = read_split(uri, "test", ["image", "clean_label"])
    spec = eval_spec(info)
    y_pred = predict(model, test["image"].to_pylist(), spec, torch.device("cpu"), batch=256)
    y_true = np.asarray(test["clean_label"].to_pylist())
    metrics = classification_metrics(y_true=y_true, y_pred=y_pred, num_classes=info.num_classes)
    print(f"clean-test macro-F1 {metrics['macro_f1']:.3f} in {result.seconds:.0f} s")
    assert metrics["macro_f1"] >= MIN_MACRO_F1, metrics
