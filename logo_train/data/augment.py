"""Train and eval transforms (albumentations), built from one ``TransformSpec``, and the one
normalisation every path uses.

Train, eval and inference share the way a crop of any aspect becomes a square
(``to_square``: ``model.resize``), the final resize to ``image_size`` and the normalisation from
the model's own timm data config, so they cannot drift apart (the reference project trained at
256 px and evaluated at 224). The transforms end in uint8 images (``to_uint8_batch``); the
normalisation is a separate step (``normalise``), so the Ray Data pipeline ships uint8 (a
quarter of float32's bytes) and each training worker normalises on its device with its
backbone's own mean/std, as timm's prefetch loader does. ``to_tensor_batch`` chains the two for
evaluation, the audit and the benchmark.

No flips: a mirrored badge is not the brand's badge (wordmarks, Ford's script, Kia's
letters), so a flip would teach the model logos that do not exist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from logo_train.config import AugmentConfig

# albumentations checks PyPI for a newer release at import; nothing here may touch the network
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2  # noqa: E402

RESIZE_MODES = ("stretch", "pad", "crop")
"""How a crop that is not square becomes the model's square input (``model.resize``):
``stretch`` scales each side on its own (the shape distorts), ``pad`` keeps the aspect and pads
the short side with ``PAD_RGB`` (a letterbox), ``crop`` keeps the aspect and cuts the long
side's centre. Square crops are the same under all three."""
PAD_RGB = (124, 116, 104)
"""ImageNet's mean colour: near zero after any timm normalisation. A constant, not the model's
own mean, because the Ray Data stream is made before normalisation and shared by backbones."""


@dataclass(frozen=True)
class TransformSpec:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    strength: float = 0.5
    """RandAugment-like magnitude in [0, 1]: scales every random range; 0 = resize only."""
    min_crop_scale: float = 0.6
    """Smallest area share kept by the random resized crop (a logo must stay in the crop)."""
    resize: str = "stretch"
    """One of ``RESIZE_MODES``: how a non-square crop becomes square, in every path."""

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r}: expected one of {list(RESIZE_MODES)}")


def transform_specs(
    image_size: int,
    augment: AugmentConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    resize: str = "stretch",
) -> tuple[TransformSpec, TransformSpec]:
    """(train, eval) specs for a model's normalisation: augmented and plain resize."""
    common = {"image_size": image_size, "mean": tuple(mean), "std": tuple(std), "resize": resize}
    train = TransformSpec(
        **common, strength=augment.strength, min_crop_scale=augment.min_crop_scale
    )
    return train, TransformSpec(**common)


@lru_cache(maxsize=8)
def train_transform(spec: TransformSpec) -> A.Compose:
    m = spec.strength
    size = (spec.image_size, spec.image_size)
    if m == 0:
        return eval_transform(spec)
    return A.Compose(
        [
            A.RandomResizedCrop(
                size=size, scale=(1 - (1 - spec.min_crop_scale) * m, 1.0), ratio=(0.8, 1.25)
            ),
            A.Affine(
                rotate=(-15 * m, 15 * m),
                shear=(-8 * m, 8 * m),
                translate_percent=(-0.06 * m, 0.06 * m),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
            ),
            A.ColorJitter(
                brightness=0.4 * m, contrast=0.4 * m, saturation=0.4 * m, hue=0.05 * m, p=0.8
            ),
            A.ToGray(p=0.1 * m),
            A.OneOf(
                [
                    A.GaussianBlur(sigma_limit=(0.2, 0.2 + 1.2 * m)),
                    A.MotionBlur(blur_limit=(3, 5)),
                ],
                p=0.4 * m,
            ),
            A.GaussNoise(std_range=(0.01, 0.01 + 0.07 * m), p=0.3 * m),
            A.ImageCompression(quality_range=(int(95 - 55 * m), 95), p=0.3 * m),
            A.CoarseDropout(
                num_holes_range=(1, 2),
                hole_height_range=(0.1, 0.25),
                hole_width_range=(0.1, 0.25),
                p=0.3 * m,
            ),
        ]
    )


def eval_spec(meta) -> TransformSpec:
    """The evaluation spec of a trained model: its checkpoint's ``ModelInfo`` or an exported
    ``model.json`` (image size, mean, std, resize; models saved before ``resize`` existed
    were trained with ``stretch``)."""
    resize = getattr(meta, "resize", None) or "stretch"
    return TransformSpec(meta.image_size, tuple(meta.mean), tuple(meta.std), resize=resize)


def to_square(image: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """An RGB HWC crop of any aspect -> a square one at its own resolution (``spec.resize``);
    a square crop comes back as it is. The train and eval transforms start from this square."""
    h, w = image.shape[:2]
    if h == w:
        return image
    if spec.resize == "stretch":
        side = max(h, w)
        return cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
    if spec.resize == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return image[top : top + side, left : left + side]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(
        image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=PAD_RGB
    )


@lru_cache(maxsize=8)
def eval_transform(spec: TransformSpec) -> A.Compose:
    """Resize the square (``to_square``) to ``image_size``: eval and inference."""
    return A.Compose([A.Resize(spec.image_size, spec.image_size, interpolation=cv2.INTER_LINEAR)])


def decode_image(data: bytes) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> RGB uint8 HWC: the package's one decoder (training, the
    audit's sheets, prediction). Bytes OpenCV cannot decode raise ``ValueError``."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("could not decode the image bytes (not a JPEG/PNG OpenCV reads)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decodes(data: bytes) -> bool:
    """Whether ``decode_image`` reads these bytes."""
    try:
        decode_image(data)
    except ValueError:
        return False
    return True


def decode_batch(images: list[bytes] | np.ndarray) -> list[np.ndarray]:
    try:
        return [decode_image(data) for data in images]
    except ValueError as e:
        raise ValueError(f"an image in the batch: {e} (a corrupt shard row?)") from None


def eval_uint8(images: list[bytes] | np.ndarray, spec: TransformSpec) -> np.ndarray:
    """The evaluation path's first half, encoded images -> uint8 NCHW: decode, make square
    (``to_square``, as in training) and resize to ``image_size``."""
    return to_uint8_batch(decode_batch(images), spec, train=False)


def eval_inputs(images: list[bytes] | np.ndarray, spec: TransformSpec) -> np.ndarray:
    """The evaluation path, encoded images -> the model's float32 NCHW input: ``eval_uint8``
    then ``normalise``. The benchmark and the audit call this; ``logo-train predict`` calls its
    two halves in two pipeline stages (decode in tasks, normalise beside the model)."""
    return normalise(eval_uint8(images, spec), spec.mean, spec.std)


def to_uint8_batch(images: list[np.ndarray], spec: TransformSpec, train: bool) -> np.ndarray:
    """RGB uint8 HWC images -> uint8 NCHW, transformed (not yet normalised)."""
    tf = train_transform(spec) if train else eval_transform(spec)
    batch = np.stack([tf(image=to_square(img, spec))["image"] for img in images])
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def normalise(x, mean: Sequence[float], std: Sequence[float]):
    """uint8 NCHW -> float32 ``(x / 255 - mean) / std``; a numpy array or a torch tensor (on any
    device) in, the same kind out. The only normalisation in the project."""
    if isinstance(x, np.ndarray):
        m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray((x.astype(np.float32) / 255.0 - m) / s)
    import torch

    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


def to_tensor_batch(images: list[np.ndarray], spec: TransformSpec, train: bool) -> np.ndarray:
    """RGB uint8 HWC images -> float32 NCHW, transformed and normalised."""
    return normalise(to_uint8_batch(images, spec, train), spec.mean, spec.std)
