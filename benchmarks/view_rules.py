"""A second test-time view on real photos, with the rules that could combine it: an exported
model (``runs/quick/report/model``) scores every photo as the package does (the whole photo,
made square as in training) and as its centre square (the photo cut to its shorter side: a
wide photo's badge larger). Per rule and threshold it prints, for each real set: top-1, right
after the open-set answer, right top-1 answers kept, its web photos right after the answer,
and the share of outside-brand photos answered ``unknown``. Rules:

- ``whole``: the package's answer (one view);
- ``mean``: the mean of the two views' probabilities, its top class and top probability;
- ``mean-class, max-confidence``: the top class of the mean, with the higher of the two views'
  probabilities for that class as the confidence the threshold sees.

    python benchmarks/view_rules.py --model runs/quick/report/model --real A=SET_A \
        --outside A=SET_A_outside --real B=SET_B --outside B=SET_B_outside --out views.json

Real sets are ImageFolders (one folder per class, named as the model's classes); a photo whose
path holds ``/cam_`` or ``/cctv_`` counts as a camera crop, any other as a web photo.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from logo_train.calibration import softmax
from logo_train.config.data import IngestConfig
from logo_train.data.augment import decode_image, eval_spec, eval_transform, normalise, to_square
from logo_train.data.ingest import IMAGE_EXTENSIONS, stored_bytes
from logo_train.exported import load_exported, onnx_session
from logo_train.predict import collect_inputs

RULES = ("whole", "mean", "mean-class, max-confidence")


def centre_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def view_probabilities(paths: list[Path], model_dir: Path) -> np.ndarray:
    """(photos, 2 views, classes): the calibrated probabilities of the whole photo and of its
    centre square, from the exported ONNX model."""
    meta = load_exported(model_dir)
    spec = eval_spec(meta)
    session = onnx_session((model_dir / "model.onnx").read_bytes(), threads=2)
    resize = eval_transform(spec)
    out = []
    max_pixels = IngestConfig().max_pixels
    for path in paths:  # read as `logo-train predict` reads a file
        image = decode_image(stored_bytes(path.read_bytes(), max_pixels, full_decode=False))
        views = [resize(image=to_square(v, spec))["image"] for v in (image, centre_square(image))]
        x = normalise(np.stack(views).transpose(0, 3, 1, 2), spec.mean, spec.std)
        out.append(softmax(session.run(["logits"], {"image": x})[0], meta.temperature))
    return np.stack(out)


def answer(probs: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(class index, confidence) of every photo under ``rule``."""
    if rule == "whole":
        p = probs[:, 0]
        cls = p.argmax(1)
        return cls, p[np.arange(len(p)), cls]
    mean = probs.mean(1)
    cls = mean.argmax(1)
    if rule == "mean":
        return cls, mean[np.arange(len(mean)), cls]
    return cls, probs[np.arange(len(cls)), :, cls].max(1)


def scores(real, outside, classes: list[str], rule: str, threshold: float) -> dict:
    """The numbers of one real set (``real``: paths, true labels, probabilities; ``outside``:
    probabilities) under one rule and threshold."""
    paths, truth, probs = real
    unknown = classes.index("unknown")
    cls, conf = answer(probs, rule)
    top1 = np.asarray(classes, dtype=object)[cls] == truth
    after = top1 & (conf >= threshold)
    web = np.asarray(["/cam_" not in str(p) and "/cctv_" not in str(p) for p in paths])
    out_cls, out_conf = answer(outside, rule)
    return {
        "top1": float(top1.mean()),
        "after": float(after.mean()),
        "kept": float(after.sum() / max(top1.sum(), 1)),
        "web_after": float(after[web].mean()) if web.any() else None,
        "outside_unknown": float(((out_cls == unknown) | (out_conf < threshold)).mean()),
    }


def images_under(folder: str, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """The image files of ``folder`` and their labels, found as ``logo-train predict`` finds
    them (``predict.collect_inputs``: the class folder names the label)."""
    files = [(Path(p), label) for p, label in collect_inputs([folder], classes).files]
    files = [(p, label) for p, label in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    return [p for p, _ in files], np.asarray([label for _, label in files], dtype=object)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="an exported model folder")
    ap.add_argument("--real", action="append", required=True, help="NAME=IMAGEFOLDER")
    ap.add_argument("--outside", action="append", required=True, help="NAME=FOLDER")
    ap.add_argument("--thresholds", default="0.45,0.55,0.65")
    ap.add_argument("--out", type=Path, default=Path("view_rules.json"))
    args = ap.parse_args()
    classes = list(load_exported(args.model).class_names)
    outside = dict(a.split("=", 1) for a in args.outside)
    results = []
    for name, folder in (a.split("=", 1) for a in args.real):
        paths, truth = images_under(folder, classes)
        real = (paths, truth, view_probabilities(paths, args.model))
        out = view_probabilities(images_under(outside[name], classes)[0], args.model)
        print(f"{name}: {len(paths)} photos, {len(out)} outside")
        for rule in RULES:
            for t in (float(x) for x in args.thresholds.split(",")):
                row = {"set": name, "rule": rule, "threshold": t}
                results.append({**row, **scores(real, out, classes, rule, t)})
    args.out.write_text(json.dumps(results, indent=1))
    print("| set | rule | threshold | top-1 | after | kept | web after | outside -> unknown |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        web = "–" if r["web_after"] is None else f"{r['web_after']:.3f}"
        cells = f"{r['after']:.3f} | {r['kept']:.3f} | {web} | {r['outside_unknown']:.3f}"
        print(f"| {r['set']} | {r['rule']} | {r['threshold']:.2f} | {r['top1']:.3f} | {cells} |")


if __name__ == "__main__":
    main()
