"""Real photos against the fine-tuning recipe and the open-set rule, on two disjoint real sets.

    python benchmarks/real_photo_study.py --shards runs/quick/data \\
        --real A=DEV_A --outside A=DEV_A_outside --real B=DEV_B --outside B=DEV_B_outside \\
        --variant 'recipe:' --variant 'strong: augment.strength=0.5'

Paired, on one model: ``--weights OUT/real_photo_study/recipe.pt --variant 'views:' --variant
'oneview: model.test_views=[1.0]'`` (training in process on CPU is not bit-reproducible: two
fits of the same variant differ by a point or two on the real sets).

Each variant is configs/quick.yaml's recipe for ``--backbone`` with the variant's overrides
(``benchmarks/finetune_recipe.py``'s syntax), trained in one process (``fit_local``) on the
shards' train split and averaged with its starting weights when its ``train.wise_alpha`` says
so, as the train stage does (``<variant>.pt`` keeps the weights as trained: ``--weights`` with
``--wise`` re-scores them at another average): the quick profile's data, 20% wrong labels,
imbalance 10, difficulty 0.5, unchanged. The trained model scores the validation and test splits
and every real set; its logits and pre-logit features are kept
(``<out>/real_photo_study/<variant>.npz``) so that every open-set rule is compared on the same
numbers (``--rules-only`` re-reads them), and every rule is fitted on what the run itself has
(the validation renders, plain or seen through the training augmentation at ``--aug-strength``)
and judged on the real sets it never saw:

* top-1 per real set (and per source, ``real_eval.sources_of``: the development sets'
  ``cctv_``, ``web_`` and ``cam_`` file-name prefixes) before the open-set answer,
* per rule: right answers kept, accuracy after the answer, outside photos called ``unknown``.

Written: ``real_photo_study.json`` and ``real_photo_study.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from finetune_recipe import parse_variant, variant_config  # benchmarks/, beside this script

from logo_train.calibration import DEFAULT_MAX_THRESHOLD
from logo_train.data.augment import decode_batch, eval_inputs, to_tensor_batch, train_transform
from logo_train.data.shards import read_manifest, read_split
from logo_train.evaluate import quality
from logo_train.local import fit_local, model_transform_specs
from logo_train.models import TestViews, build_model
from logo_train.real_eval import load_outside_set, load_real_set, sources_of

ROOT = Path(__file__).resolve().parents[1]


# Open-set rules under study: (score, data the threshold is fitted on, share of right kept).
# Scores: "prob" the temperature-scaled top probability, "logit" the top logit, "energy"
# logsumexp of the logits, "margin" top-1 minus top-2 probability, "cosine" the feature's
# cosine to its class's mean validation feature.
RULES: dict[str, tuple[str, str, float]] = {
    "prob/val/0.95 (before)": ("prob", "val", 0.95),
    "prob/aug/0.95 cap 0.55 (the package)": ("prob", "aug", 0.95),
    "prob/val/0.99": ("prob", "val", 0.99),
    "prob/aug/0.95": ("prob", "aug", 0.95),
    "prob/aug/0.90": ("prob", "aug", 0.90),
    "logit/val/0.99": ("logit", "val", 0.99),
    "logit/aug/0.95": ("logit", "aug", 0.95),
    "energy/aug/0.95": ("energy", "aug", 0.95),
    "margin/aug/0.95": ("margin", "aug", 0.95),
    "cosine/aug/0.95": ("cosine", "aug", 0.95),
    "none": ("prob", "val", 0.0),
}


def rule_scores(fitted: dict, logits: np.ndarray, feats: np.ndarray) -> np.ndarray:
    from logo_train.calibration import softmax

    kind = fitted["score"]
    if kind == "prob":
        return softmax(logits, fitted["temperature"]).max(1)
    if kind == "logit":
        return logits.max(1)
    if kind == "energy":
        m = logits.max(1, keepdims=True)
        return (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    if kind == "margin":
        p = np.sort(softmax(logits, fitted["temperature"]), axis=1)
        return p[:, -1] - p[:, -2]
    protos = fitted["prototypes"]
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-9)
    return (f * protos[logits.argmax(1)]).sum(1)


def fit_rule(rule: str, arrays: dict, unknown: int | None) -> dict:
    from logo_train.calibration import fit_temperature

    score, data, keep = RULES[rule]
    val_z, val_y = arrays["val_logits"], arrays["val_labels"]
    fitted = {"score": score, "temperature": fit_temperature(val_z, val_y), "threshold": 0.0}
    f = arrays["val_feat"] / np.linalg.norm(arrays["val_feat"], axis=1, keepdims=True)
    protos = np.stack([f[val_y == c].mean(0) if (val_y == c).any() else np.zeros(f.shape[1])
                       for c in range(val_z.shape[1])])  # fmt: skip
    fitted["prototypes"] = protos / np.linalg.norm(protos, axis=1, keepdims=True).clip(1e-9)
    if keep == 0:
        fitted["threshold"] = -np.inf
        return fitted
    z, y, feats = (arrays[f"{data}_logits"], arrays[f"{data}_labels"], arrays[f"{data}_feat"])
    right = (z.argmax(1) == y) & (y != unknown if unknown is not None else True)
    s = rule_scores(fitted, z, feats)[right]
    fitted["threshold"] = float(np.quantile(s, 1 - keep, method="lower"))
    if "cap" in rule:  # calibration.DEFAULT_MAX_THRESHOLD: never above it
        fitted["threshold"] = min(fitted["threshold"], DEFAULT_MAX_THRESHOLD)
    return fitted


def parse_named(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for text in values:
        name, sep, path = text.partition("=")
        if not sep:
            raise SystemExit(f"{flag} {text!r}: expected NAME=FOLDER")
        out[name] = path
    return out


def embed(model, looks: TestViews, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(pre-logit features, logits) of a batch: with more than one test-time view
    (``model.test_views``), the views' mean features and their logits (for the linear head,
    the mean logits that ``TestViews`` answers with)."""
    with torch.inference_mode():
        views = [model.forward_features(v) for v in looks.inputs(x)]
        f = torch.stack([model.forward_head(v, pre_logits=True) for v in views]).mean(0)
        return f.float().cpu().numpy(), model.get_classifier()(f).double().cpu().numpy()


def features_and_logits(model, looks, images, spec, device, batch: int = 128):
    """``embed`` of encoded images, the evaluation path."""
    parts = [
        embed(model, looks, torch.from_numpy(eval_inputs(images[i : i + batch], spec)).to(device))
        for i in range(0, len(images), batch)
    ]
    return np.concatenate([f for f, _ in parts]), np.concatenate([z for _, z in parts])


def run_variant(name, overrides, args, manifest, reals, outsides, out: Path) -> dict:
    cfg = variant_config(args.backbone, overrides, args.set)
    start = time.perf_counter()
    if args.weights:  # a saved variant's model, looked at differently (e.g. model.test_views)
        model = build_model(args.backbone, len(manifest.classes), cfg.model.image_size)
        model.load_state_dict(torch.load(args.weights, weights_only=True))
        if args.wise < 1:
            wise_ft(model, args.backbone, len(manifest.classes), cfg, args.wise)
        model.eval()
        val_f1 = float("nan")
    else:
        fit = fit_local(
            cfg, args.backbone, args.shards, manifest, loader_workers=args.loader_workers
        )
        model, val_f1 = fit.classifier, fit.history[-1]["val_macro_f1"]
        (out / "real_photo_study").mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "real_photo_study" / f"{name}.pt")  # as trained
        if cfg.train.wise_alpha < 1:  # as the train stage hands it over
            wise_ft(model, args.backbone, len(manifest.classes), cfg, cfg.train.wise_alpha)
    seconds = time.perf_counter() - start
    device = next(model.parameters()).device
    _, spec = model_transform_specs(cfg, args.backbone, len(manifest.classes))
    looks = TestViews(model, cfg.model.test_views, spec.image_size)
    arrays: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        table = read_split(args.shards, split, ["image", "label"])
        if not table.num_rows:
            continue
        f, z = features_and_logits(model, looks, table["image"].to_pylist(), spec, device)
        arrays[f"{split}_feat"], arrays[f"{split}_logits"] = f, z
        arrays[f"{split}_labels"] = np.asarray(table["label"].to_pylist())
    aug_spec = replace(spec, strength=args.aug_strength)
    val = read_split(args.shards, "val", ["image", "label"])
    decoded = decode_batch(val["image"].to_pylist())
    parts = []
    for k in range(args.aug_passes):  # seeded as bench.shifted_logits: the package's fit
        train_transform(aug_spec).set_random_seed(k)
        x = torch.from_numpy(to_tensor_batch(decoded, aug_spec, train=True))
        parts.append(embed(model, looks, x))
    arrays["aug_feat"] = np.concatenate([f for f, _ in parts])
    arrays["aug_logits"] = np.concatenate([z for _, z in parts])
    arrays["aug_labels"] = np.tile(np.asarray(val["label"].to_pylist()), args.aug_passes)
    for set_name, real in reals.items():
        f, z = features_and_logits(model, looks, real.images, spec, device)
        arrays[f"real_{set_name}_feat"], arrays[f"real_{set_name}_logits"] = f, z
        arrays[f"real_{set_name}_labels"] = np.asarray(real.labels)
        arrays[f"real_{set_name}_source"] = np.asarray(sources_of(real.paths))
    for set_name, outside in outsides.items():
        f, z = features_and_logits(model, looks, outside.images, spec, device)
        arrays[f"outside_{set_name}_feat"], arrays[f"outside_{set_name}_logits"] = f, z
    (out / "real_photo_study").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "real_photo_study" / f"{name}.npz", **arrays)
    test = quality(arrays["test_labels"], arrays["test_logits"].argmax(1), manifest.classes)
    return {
        "variant": name,
        "overrides": overrides,
        "test_views": list(cfg.model.test_views),
        "weights": args.weights,
        "wise": args.wise if args.weights else cfg.train.wise_alpha,
        "val_macro_f1": val_f1,
        "test_macro_f1": test["metrics"]["macro_f1"],
        "train_seconds": seconds,
    }


def wise_ft(model, backbone: str, num_classes: int, cfg, alpha: float) -> None:
    """``logo_train.wise``'s average of the saved weights and the starting weights."""
    from logo_train import wise

    start = wise.starting_weights(cfg, backbone, num_classes)
    keep = wise.classifier_prefixes(model)
    model.load_state_dict(wise.interpolate(model.state_dict(), start, alpha, keep))


def judge(arrays, unknown: int | None) -> dict:
    """Per rule fitted on the renders: what it does on every real set."""
    out = {}
    sets = sorted(k[len("real_") : -len("_logits")] for k in arrays if k.startswith("real_")
                  and k.endswith("_logits"))  # fmt: skip
    for set_name in sets:
        z, y = arrays[f"real_{set_name}_logits"], arrays[f"real_{set_name}_labels"]
        src = arrays[f"real_{set_name}_source"]
        top = z.argmax(1)
        row = {"images": int(len(y)), "top1": float((top == y).mean())}
        row["top1_by_source"] = {
            s: float((top[src == s] == y[src == s]).mean()) for s in sorted(set(src.tolist()))
        }
        out[set_name] = row
    for rule in RULES:
        fitted = fit_rule(rule, arrays, unknown)
        for set_name in sets:
            z, y = arrays[f"real_{set_name}_logits"], arrays[f"real_{set_name}_labels"]
            f = arrays[f"real_{set_name}_feat"]
            answer = _answer(fitted, z, f, unknown)
            right = z.argmax(1) == y
            row = {
                "right_kept": float(((answer >= 0) & right).sum() / max(right.sum(), 1)),
                "accuracy": float((answer == y).mean()),
            }
            key = f"outside_{set_name}_logits"
            if key in arrays:
                ao = _answer(fitted, arrays[key], arrays[f"outside_{set_name}_feat"], unknown)
                row["outside_unknown"] = float((ao < 0).mean())
            out[set_name].setdefault("rules", {})[rule] = {**row, "threshold": fitted["threshold"]}
    return out


def _answer(fitted, logits, feats, unknown):
    score = rule_scores(fitted, logits, feats)
    top = logits.argmax(1)
    rejected = score < fitted["threshold"]
    if unknown is not None:
        rejected |= top == unknown
    return np.where(rejected, -1, top)


def markdown(rows: list[dict]) -> str:
    lines = ["# Real photos: recipe and open-set rule", ""]
    for r in rows:
        lines.append(
            f"## {r['variant']} ({', '.join(r['overrides']) or 'the recipe'}): val F1 "
            f"{r['val_macro_f1']:.3f}, test F1 {r['test_macro_f1']:.3f}, "
            f"{r['train_seconds']:.0f} s"
        )
        lines.append("")
        lines.append("| set | top-1 | by source | rule | threshold | right kept | after answer "
                     "| outside → unknown |")  # fmt: skip
        lines.append("|---|---:|---|---|---:|---:|---:|---:|")
        for set_name, s in r["real"].items():
            src = ", ".join(f"{k} {v:.2f}" for k, v in s["top1_by_source"].items())
            for rule, j in s.get("rules", {}).items():
                lines.append(
                    f"| {set_name} | {s['top1']:.3f} | {src} | {rule} | {j['threshold']:.3g} "
                    f"| {j['right_kept']:.3f} | {j['accuracy']:.3f} "
                    f"| {j.get('outside_unknown', float('nan')):.3f} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True)
    p.add_argument("--real", action="append", default=[], help="NAME=FOLDER (ImageFolder)")
    p.add_argument("--outside", action="append", default=[], help="NAME=FOLDER (any layout)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--variant", action="append", default=[], help="'NAME: KEY=VALUE; ...'")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every variant")
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--aug-strength", type=float, default=0.8, help="the shifted validation")
    p.add_argument("--aug-passes", type=int, default=3)
    p.add_argument("--rules-only", action="store_true", help="re-judge the saved arrays")
    p.add_argument(
        "--weights",
        default="",
        help="a saved variant's .pt: every variant scores this model instead of training one "
        "(variants then differ in how the model looks: model.test_views; fit_local on CPU is "
        "not bit-reproducible, so this is the paired comparison)",
    )
    p.add_argument(
        "--wise",
        type=float,
        default=1.0,
        help="with --weights: WiSE-FT (logo_train.wise), alpha x the saved weights + "
        "(1 - alpha) x the starting ones (the classifier kept); 1 = the saved weights",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(args.shards)
    unknown = manifest.classes.index("unknown") if "unknown" in manifest.classes else None
    done = out / "real_photo_study.json"
    rows: list[dict] = json.loads(done.read_text()) if done.exists() else []
    if args.rules_only:
        for r in rows:
            arrays = dict(np.load(out / "real_photo_study" / f"{r['variant']}.npz"))
            r["real"] = judge(arrays, unknown)
    else:
        reals = {
            k: load_real_set(v, manifest.classes)
            for k, v in parse_named(args.real, "--real").items()
        }
        outsides = {
            k: load_outside_set(v) for k, v in parse_named(args.outside, "--outside").items()
        }
        for text in args.variant or ["recipe:"]:
            name, overrides = parse_variant(text)
            print(f"=== {name}: {overrides}", flush=True)
            row = run_variant(name, overrides, args, manifest, reals, outsides, out)
            arrays = dict(np.load(out / "real_photo_study" / f"{row['variant']}.npz"))
            row["real"] = judge(arrays, unknown)
            rows = [r for r in rows if r["variant"] != row["variant"]] + [row]
            done.write_text(json.dumps(rows, indent=1))
            (out / "real_photo_study.md").write_text(markdown(rows))
            print(markdown([row]), flush=True)
    done.write_text(json.dumps(rows, indent=1))
    (out / "real_photo_study.md").write_text(markdown(rows))
    print(f"written: {out / 'real_photo_study.md'}")


if __name__ == "__main__":
    main()
