"""Train and eval transforms share size and normalisation; train actually varies."""

import numpy as np
import pytest

from logo_train.data.augment import (
    RESIZE_MODES,
    TransformSpec,
    eval_transform,
    to_tensor_batch,
    train_transform,
)
from logo_train.data.datasets import transform_batch

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


def _two_to_one() -> np.ndarray:
    """20 x 40 (wider than tall): red left half, blue right half, a green 10 x 10 centre."""
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)
    img[:, 20:] = (0, 0, 255)
    img[5:15, 15:25] = (0, 255, 0)
    return img


def _green_box(img: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero((img[..., 1] > 128) & (img[..., 0] < 128) & (img[..., 2] < 128))
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def test_non_square_crops_become_square_by_the_chosen_mode():
    from logo_train.data.augment import PAD_RGB, eval_uint8, to_square, to_uint8_batch

    img = _two_to_one()
    spec = {m: TransformSpec(40, SPEC.mean, SPEC.std, resize=m) for m in RESIZE_MODES}
    stretched = to_square(img, spec["stretch"])
    assert stretched.shape == (40, 40, 3) and _green_box(stretched) == (20, 10)  # distorted
    padded = to_square(img, spec["pad"])
    assert padded.shape == (40, 40, 3) and _green_box(padded) == (10, 10)  # aspect kept
    assert (padded[:10] == PAD_RGB).all() and (padded[30:] == PAD_RGB).all()
    assert np.array_equal(padded[10:30], img)
    cropped = to_square(img, spec["crop"])
    assert np.array_equal(cropped, img[:, 10:30]) and _green_box(cropped) == (10, 10)
    square = np.ascontiguousarray(img[:, :20])
    assert all(to_square(square, s) is square for s in spec.values())
    # every path starts from the same square: eval, train at strength 0, the encoded path
    import cv2

    encoded = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()
    for mode in spec:
        plain = TransformSpec(32, SPEC.mean, SPEC.std, strength=0.0, resize=mode)
        evaluated = to_uint8_batch([img], plain, train=False)
        assert evaluated.shape == (1, 3, 32, 32)
        assert np.array_equal(evaluated, to_uint8_batch([img], plain, train=True))
        assert np.array_equal(evaluated, eval_uint8([encoded], plain))
        augmented = to_uint8_batch([img], TransformSpec(32, SPEC.mean, SPEC.std, resize=mode), True)
        assert augmented.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="resize 'squash'"):
        TransformSpec(32, SPEC.mean, SPEC.std, resize="squash")


def test_a_model_without_resize_is_evaluated_as_it_was_trained():
    """Checkpoints and exported models from before ``model.resize`` were trained stretched."""
    from types import SimpleNamespace

    from logo_train.data.augment import eval_spec

    old = SimpleNamespace(image_size=32, mean=[0.5] * 3, std=[0.2] * 3)
    assert eval_spec(old).resize == "stretch"
    assert eval_spec(SimpleNamespace(**vars(old), resize="pad")).resize == "pad"
