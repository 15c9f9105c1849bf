"""The fine-tuning recipe search: which learning rate, length, frozen layers, image size and
augmentation fine-tune the pretrained backbone best, on the embedded data and on real photos.

    python benchmarks/finetune_recipe.py --shards runs/quick/data --real PATH \\
        --variant 'lr3e-3: train.lr=0.003' \\
        --variant 'frozen4: train.frozen_stages=4' \\
        --variant 'scratch: model.pretrained={efficientnet_lite0: none}'

Every variant is configs/quick.yaml's recipe for ``--backbone`` (``train.per_backbone``) with
the variant's ``;``-separated ``KEY=VALUE`` overrides on top, trained in one process
(``logo_train.local.fit_local``: the same model, loss, optimiser, step and epoch loop as a Ray
Train worker) on the shards' train split — the quick profile's data, 20% wrong labels,
imbalance 10, difficulty 0.5, unchanged. Each is scored on the validation split (what a recipe
is chosen on), the clean test split and, with ``--real``, an ImageFolder of real photos
(``data.real_eval``'s format; top-1 over all, and per camera kind: files named ``cctv_*`` are
surveillance crops, the rest web/phone photos). Written: ``finetune_recipe.json`` (every run
with its history) and ``finetune_recipe.md`` (the table), appended run by run so an
interrupted search keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from logo_train.config import (
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    set_dotted,
)
from logo_train.data.shards import read_manifest
from logo_train.local import evaluate_split, fit_local, model_transform_specs
from logo_train.real_eval import load_outside_set, load_real_set, score_outside, score_real

ROOT = Path(__file__).resolve().parents[1]
CCTV = "cctv_"
"""File-name prefix of the development set's surveillance-camera crops."""


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``'name: a.b=1; c.d=2'`` -> ``('name', ['a.b=1', 'c.d=2'])``."""
    name, _, rest = text.partition(":")
    overrides = [o.strip() for o in rest.split(";") if o.strip()]
    if not name.strip():
        raise SystemExit(f"--variant {text!r}: expected 'NAME: KEY=VALUE; ...'")
    return name.strip(), overrides


def real_by_camera(result: dict, paths: list[str]) -> dict[str, float]:
    """Top-1 per camera kind from ``score_real``'s mistakes."""
    wrong = {m["index"] for m in result["mistakes"]}
    kinds: dict[str, list[bool]] = {}
    for i, path in enumerate(paths):
        kind = "cctv" if Path(path).name.startswith(CCTV) else "web"
        kinds.setdefault(kind, []).append(i not in wrong)
    return {k: sum(v) / len(v) for k, v in sorted(kinds.items())}


def real_by_class_and_camera(result: dict, real) -> dict[str, float]:
    """Top-1 per ``class/camera`` (e.g. ``Honda/cctv``)."""
    wrong = {m["index"] for m in result["mistakes"]}
    cells: dict[str, list[bool]] = {}
    for i, (path, label) in enumerate(zip(real.paths, real.labels, strict=True)):
        kind = "cctv" if Path(path).name.startswith(CCTV) else "web"
        cells.setdefault(f"{real.classes[label]}/{kind}", []).append(i not in wrong)
    return {k: sum(v) / len(v) for k, v in sorted(cells.items())}


def variant_config(backbone: str, overrides: list[str], common: list[str]):
    """configs/quick.yaml's recipe for ``backbone`` (``train.per_backbone``, ``common``
    overrides first), with the variant's ``overrides`` on top (which ``--set`` alone would
    not win over the per-backbone recipe)."""
    # no search here: the proxy (another size) would be checked against the variant's size
    base = [f"model.backbones=[{backbone}]", "tune.proxy_backbone=", *common]
    recipe = load_config(ROOT / "configs/quick.yaml", base).for_backbone(backbone)
    data = config_to_dict(recipe)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return config_from_dict(data)


def run_variant(name, overrides, args, manifest, real, outside) -> dict:
    cfg = variant_config(args.backbone, overrides, args.set)
    start = time.perf_counter()
    fit = fit_local(
        cfg,
        args.backbone,
        args.shards,
        manifest,
        loader_workers=args.loader_workers,
        eval_every=args.eval_every,
        echo=print,
    )
    seconds = time.perf_counter() - start
    test = evaluate_split(fit.classifier, cfg, args.backbone, args.shards, manifest, "test")
    out = {
        "variant": name,
        "overrides": overrides,
        "image_size": cfg.model.image_size,
        "epochs": cfg.train.epochs,
        "lr": cfg.train.lr,
        "frozen_stages": cfg.train.frozen_stages,
        "augment_strength": cfg.augment.strength,
        "loss": cfg.train.loss,
        "val_macro_f1": fit.history[-1]["val_macro_f1"],
        "test_macro_f1": test["macro_f1"],
        "test_accuracy": test["accuracy"],
        "train_seconds": seconds,
        "train_images_per_s": sum(h["train_images_per_s"] for h in fit.history) / len(fit.history),
        "history": fit.history,
    }
    _, spec = model_transform_specs(cfg, args.backbone, len(manifest.classes))
    open_set = calibrated(fit.classifier, spec, args.shards, manifest, cfg)
    out["calibration"] = {k: v for k, v in open_set.items() if k != "unknown"}
    if real is not None:
        scored = score_real(fit.classifier, real, spec, torch.device("cpu"), **_answer(open_set))
        out["real_top1"] = scored["top1"]
        out["real_top3"] = scored["top3"]
        out["real_by_camera"] = real_by_camera(scored, real.paths)
        out["real_per_class"] = {c["class"]: c["top1"] for c in scored["per_class"]}
        out["real_per_class_camera"] = real_by_class_and_camera(scored, real)
        out["real_right_kept"] = scored["open_set"]["right_kept"]
    if outside is not None:
        rejected = score_outside(
            fit.classifier, outside, spec, torch.device("cpu"), manifest.classes,
            **_answer(open_set),
        )  # fmt: skip
        out["outside_unknown"] = rejected["answered_unknown"]
    if real is not None and outside is not None:
        sweep = keep_sweep(fit.classifier, spec, args.shards, real, outside, open_set)
        out["open_set_sweep"] = sweep
    return out


def keep_sweep(model, spec, shards, real, outside, open_set: dict) -> list[dict]:
    """What other ``benchmark.open_set_keep`` values would do: for each, the threshold fitted
    on validation, the real photos' right answers kept and the outside photos rejected."""
    from logo_train.calibration import open_set_answer, open_set_threshold
    from logo_train.data.shards import read_split
    from logo_train.real_eval import probabilities

    cpu, t, unknown = torch.device("cpu"), open_set["temperature"], open_set["unknown"]
    split = read_split(shards, "val", ["image", "label"])
    val = probabilities(model, split["image"].to_pylist(), spec, cpu, 128, t)
    val_labels = np.asarray(split["label"].to_pylist())
    p_real = probabilities(model, real.images, spec, cpu, 64, t)
    p_out = probabilities(model, outside.images, spec, cpu, 64, t)
    labels = np.asarray(real.labels)
    right = p_real.argmax(1) == labels
    rows = []
    for keep in (0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0):
        threshold = open_set_threshold(val, val_labels, keep)
        kept = open_set_answer(p_real, threshold, unknown) >= 0
        rows.append({
            "keep": keep,
            "min_confidence": threshold,
            "real_right_kept": float((kept & right).sum() / max(right.sum(), 1)),
            "outside_unknown": float((open_set_answer(p_out, threshold, unknown) < 0).mean()),
        })  # fmt: skip
    return rows


def _answer(open_set: dict) -> dict:
    return {k: open_set[k] for k in ("temperature", "min_confidence", "unknown")}


def calibrated(model, spec, shards, manifest, cfg) -> dict:
    """The benchmark's open-set answer for a model (``bench.fit_open_set``: temperature and
    threshold fitted on the validation split) and the validation ECE before and after."""
    from logo_train.data.shards import read_split
    from logo_train.engine import logits_of
    from logo_train.evaluate import fit_open_set

    dev = torch.device("cpu")
    test = read_split(shards, "test", ["image", "label"])
    t = logits_of(model, test["image"].to_pylist(), spec, dev, 128)
    cal, open_set = fit_open_set(
        model, shards, spec, dev, manifest.classes, t, np.asarray(test["label"].to_pylist()),
        keep=cfg.benchmark.open_set_keep, batch=128,
    )  # fmt: skip
    return {
        **open_set,
        "val_ece_before": cal["val"]["ece_before"],
        "val_ece_after": cal["val"]["ece_after"],
    }


def markdown(rows: list[dict], args) -> str:
    cams = sorted({k for r in rows for k in r.get("real_by_camera", {})})
    head = ["variant", "px", "epochs", "lr", "frozen", "aug", "val F1", "test F1", "real top-1"]
    head += [f"real {c}" for c in cams] + ["right kept", "outside unknown", "ECE val"]
    head += ["train s", "img/s"]
    lines = [
        f"# Fine-tuning recipe search: {args.backbone} on {args.shards}"
        + (f", real photos {args.real}" if args.real else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            r["variant"],
            str(r["image_size"]),
            str(r["epochs"]),
            f"{r['lr']:g}",
            str(r["frozen_stages"]),
            f"{r['augment_strength']:g}",
            f"{r['val_macro_f1']:.3f}",
            f"{r['test_macro_f1']:.3f}",
            f"{r['real_top1']:.3f}" if "real_top1" in r else "-",
            *[f"{r.get('real_by_camera', {}).get(c, float('nan')):.3f}" for c in cams],
            f"{r['real_right_kept']:.3f}" if "real_right_kept" in r else "-",
            f"{r['outside_unknown']:.3f}" if "outside_unknown" in r else "-",
            f"{r['calibration']['val_ece_before']:.3f} → {r['calibration']['val_ece_after']:.3f}"
            if "calibration" in r
            else "-",
            f"{r['train_seconds']:.0f}",
            f"{r['train_images_per_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Overrides per variant: "
        + "; ".join(
            f"`{r['variant']}`: {', '.join(r['overrides']) or '(the recipe)'}" for r in rows
        )
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="shards folder (e.g. runs/quick/data)")
    p.add_argument("--real", default="", help="ImageFolder of real photos (data.real_eval)")
    p.add_argument("--outside", default="", help="folder of photos of no class (data.real_outside)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--variant", action="append", default=[], help="'NAME: KEY=VALUE; ...'")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every variant")
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    p.add_argument("--append", action="store_true", help="add to the rows already in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    manifest = read_manifest(args.shards)
    real = load_real_set(args.real, manifest.classes) if args.real else None
    outside = load_outside_set(args.outside) if args.outside else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = out / "finetune_recipe.json"
    rows: list[dict] = json.loads(done.read_text()) if args.append and done.exists() else []
    for text in args.variant or ["recipe:"]:
        name, overrides = parse_variant(text)
        print(f"=== {name}: {overrides}", flush=True)
        rows.append(run_variant(name, overrides, args, manifest, real, outside))
        r = rows[-1]
        print(
            f"=== {name}: val {r['val_macro_f1']:.3f} test {r['test_macro_f1']:.3f} real "
            f"{r.get('real_top1', float('nan')):.3f} {r.get('real_by_camera', {})} "
            f"outside unknown {r.get('outside_unknown', float('nan')):.3f} "
            f"{r['train_seconds']:.0f} s",
            flush=True,
        )
        (out / "finetune_recipe.json").write_text(json.dumps(rows, indent=1))
        (out / "finetune_recipe.md").write_text(markdown(rows, args))
    print(f"written: {out / 'finetune_recipe.md'}")


if __name__ == "__main__":
    main()
