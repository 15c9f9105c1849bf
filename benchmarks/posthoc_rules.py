"""Post-hoc changes to a trained model's answer, scored on the renders and on real photos:
the class-prior correction of the logits (logit adjustment, Menon et al. 2021) and the mean of
two checkpoints' logits (the run's two rounds). Nothing is retrained.

    python benchmarks/posthoc_rules.py --checkpoint R2=RUN/clean/.../best:SHARDS2 \\
        --checkpoint R1=RUN/train/run-112px/efficientnet_lite0/best:RUN/data \\
        --real A=SET_A --outside A=SET_A_outside --real B=SET_B --outside B=SET_B_outside \\
        --tau 0,0.3,0.6,1 --mix 0.3,0.5 [--out posthoc.json]

Each checkpoint scores its shards' test and validation splits, the validation split through
the training augmentation at 0.8 (3 seeded passes, as the benchmark fits the threshold) and
every real set, once (``evaluate.logits_of``); each rule then re-fits the package's open-set
answer on those logits (temperature on validation, the threshold that keeps 95% of the shifted
validation's right answers, capped at 0.55) and prints the test split's macro-F1 and, per real
set, top-1 / right after the open-set answer / right answers kept / outside photos answered
``unknown``. ``--tau``: logits − tau × log(train-split class share) of the first checkpoint;
``--mix w``: w × the second checkpoint's logits + (1 − w) × the first's (same classes and test
split). tau 0 with no mix is the package's answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from logo_train import checkpoint as ckpt
from logo_train.calibration import calibrate, open_set_answer, softmax
from logo_train.config import BenchmarkConfig
from logo_train.data.augment import eval_spec
from logo_train.data.shards import read_manifest, read_split
from logo_train.evaluate import logits_of, scoring_model, shifted_logits
from logo_train.real_eval import load_outside_set, load_real_set

OPEN_SET = BenchmarkConfig()
"""The package's open-set defaults (``benchmark.open_set_*``): the rule every row re-fits."""


def model_logits(checkpoint: str, shards: str, real: dict, outside: dict) -> dict:
    """Every array a rule needs, for one checkpoint."""
    device = torch.device("cpu")
    model, info = ckpt.load_model(checkpoint)
    model, spec = scoring_model(model, device), eval_spec(info)
    classes = list(info.class_names)
    out = {"classes": classes}
    for split in ("test", "val"):
        table = read_split(shards, split, ["image", "label"])
        images = table["image"].to_pylist()
        out[f"{split}_y"] = np.asarray(table["label"].to_pylist())
        out[f"{split}_z"] = logits_of(model, images, spec, device, 64)
    val = read_split(shards, "val", ["image"])["image"].to_pylist()
    shift, passes = OPEN_SET.open_set_shift, OPEN_SET.open_set_passes
    out["shift_z"] = shifted_logits(model, val, spec, device, shift, passes, 64)
    counts = read_manifest(shards).counts["train"]
    out["prior"] = np.asarray([counts[c] for c in classes], float) / sum(counts.values())
    for name, folder in real.items():
        photos = load_real_set(folder, classes)
        out[f"{name}_z"] = logits_of(model, photos.images, spec, device, 64)
        out[f"{name}_y"] = np.asarray(photos.labels)
    for name, folder in outside.items():
        photos = load_outside_set(folder)
        out[f"{name}_outside_z"] = logits_of(model, photos.images, spec, device, 64)
    return out


def score(z, base: dict, real: dict, outside: dict) -> dict:
    """The package's open-set answer re-fitted on the logits ``z(key)``, scored."""
    unknown = base["classes"].index("unknown")
    fitted = calibrate(
        z("val_z"), base["val_y"], z("test_z"), base["test_y"], unknown=unknown,
        keep=OPEN_SET.open_set_keep, shifted_logits=z("shift_z"),
        shifted_labels=np.tile(base["val_y"], OPEN_SET.open_set_passes),
        maximum=OPEN_SET.open_set_max,
    )  # fmt: skip
    t, threshold = fitted["temperature"], fitted["min_confidence"]
    row = {"temperature": t, "threshold": threshold}
    row["test_macro_f1"] = f1_score(base["test_y"], z("test_z").argmax(1), average="macro")
    for name in real:
        p, y = softmax(z(f"{name}_z"), t), base[f"{name}_y"]
        top, answer = p.argmax(1), open_set_answer(p, threshold, unknown)
        row[name] = {
            "top1": float((top == y).mean()),
            "after": float((answer == y).mean()),
            "kept": float((answer == y).sum() / max((top == y).sum(), 1)),
        }
        if name in outside:
            rejected = open_set_answer(softmax(z(f"{name}_outside_z"), t), threshold, unknown) < 0
            row[name]["outside_unknown"] = float(rejected.mean())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, help="NAME=FOLDER:SHARDS")
    p.add_argument("--real", action="append", default=[], help="NAME=FOLDER (ImageFolder)")
    p.add_argument("--outside", action="append", default=[], help="NAME=FOLDER, same NAME")
    p.add_argument("--tau", default="0", help="comma-separated prior-correction strengths")
    p.add_argument("--mix", default="", help="comma-separated weights of the second checkpoint")
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(2)
    real = dict(r.split("=", 1) for r in args.real)
    outside = dict(o.split("=", 1) for o in args.outside)
    models = {}
    for spec in args.checkpoint:
        name, rest = spec.split("=", 1)
        folder, shards = rest.rsplit(":", 1)
        models[name] = model_logits(folder, shards, real, outside)
    names = list(models)
    first = models[names[0]]
    rules = {}
    for tau in (float(t) for t in args.tau.split(",")):
        rules[f"{names[0]} tau {tau:g}"] = lambda k, t=tau: first[k] - t * np.log(first["prior"])
    for w in (float(m) for m in args.mix.split(",") if m):
        second = models[names[1]]
        rules[f"{w:g} x {names[1]} + {1 - w:g} x {names[0]}"] = lambda k, w=w, s=second: (
            w * s[k] + (1 - w) * first[k]
        )
    results = {name: score(z, first, real, outside) for name, z in rules.items()}
    for name, row in results.items():
        sets = " | ".join(f"{s} " + " / ".join(f"{v:.3f}" for v in row[s].values()) for s in real)
        print(f"{name:28s} test {row['test_macro_f1']:.3f} thr {row['threshold']:.3f} | {sets}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
