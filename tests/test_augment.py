"""Train and eval transforms share size and normalisation; train actually varies."""

import numpy as np
import pytest

from logo_train.data.augment import TransformSpec, eval_transform, to_tensor_batch, train_transform
from logo_train.data.pipeline import transform_batch

SPEC = TransformSpec(image_size=48, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), strength=0.8)


def images(n=4, size=40):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8) for _ in range(n)]


def test_train_and_eval_give_the_same_shape_and_normalisation():
    imgs = images()
    train = to_tensor_batch(imgs, SPEC, train=True)
    val = to_tensor_batch(imgs, SPEC, train=False)
    assert train.shape == val.shape == (4, 3, 48, 48)
    assert train.dtype == val.dtype == np.float32
    # a constant image normalises to the same values with either transform
    flat = [np.full((48, 48, 3), 128, np.uint8)]
    expected = (128 / 255 - np.array(SPEC.mean)) / np.array(SPEC.std)
    got = to_tensor_batch(flat, SPEC, train=False)[0].mean(axis=(1, 2))
    assert got == pytest.approx(expected, abs=1e-5)


def test_eval_is_deterministic_and_train_is_not():
    imgs = images(1)
    assert np.array_equal(to_tensor_batch(imgs, SPEC, False), to_tensor_batch(imgs, SPEC, False))
    draws = [to_tensor_batch(imgs, SPEC, True) for _ in range(3)]
    assert not np.array_equal(draws[0], draws[1]) or not np.array_equal(draws[1], draws[2])


def test_no_flips_in_the_train_transform():
    names = {type(t).__name__ for t in train_transform(SPEC).transforms}
    assert not names & {"HorizontalFlip", "VerticalFlip", "D4", "Transpose"}
    zero = TransformSpec(48, SPEC.mean, SPEC.std, strength=0.0)
    assert train_transform(zero) is eval_transform(zero)


def test_map_batches_function_decodes_bytes(tmp_path):
    import cv2

    ok, buf = cv2.imencode(".png", images(1)[0])
    out = transform_batch(
        {"image": np.array([buf.tobytes()], dtype=object), "label": np.array([3], np.int32)},
        SPEC,
        train=False,
    )
    assert out["image"].shape == (1, 3, 48, 48)
    assert out["label"].dtype == np.int64 and out["label"][0] == 3


def test_uint8_pipeline_then_normalise_equals_the_eval_path():
    """Ray Data ships uint8; a worker normalises on its device (torch). Both must give the
    float tensors the audit, benchmark and prediction paths compute (numpy)."""
    import torch

    from logo_train.data.augment import normalise, to_uint8_batch

    imgs = images()
    raw = to_uint8_batch(imgs, SPEC, train=False)
    assert raw.dtype == np.uint8 and raw.shape == (4, 3, 48, 48)
    on_worker = normalise(torch.from_numpy(raw), SPEC.mean, SPEC.std)
    assert on_worker.dtype == torch.float32
    np.testing.assert_allclose(on_worker.numpy(), to_tensor_batch(imgs, SPEC, False), atol=1e-6)
    out = transform_batch(
        {"image": np.array([_png(i) for i in imgs], dtype=object), "label": np.arange(4)},
        SPEC,
        train=False,
    )
    assert out["image"].dtype == np.uint8
    np.testing.assert_array_equal(out["image"], raw)


def _png(image):
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()
