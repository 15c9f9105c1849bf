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
from logo_train.real_eval import load_real_set, score_real

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


def run_variant(name, overrides, args, manifest, real) -> dict:
    # no search here: the proxy (another size) would be checked against the variant's size
    base = [f"model.backbones=[{args.backbone}]", "tune.proxy_backbone=", *args.set]
    recipe = load_config(ROOT / "configs/quick.yaml", base).for_backbone(args.backbone)
    # the variant's overrides on top of the backbone's recipe (which --set alone would not win)
    data = config_to_dict(recipe)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    cfg = config_from_dict(data)
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
    if real is not None:
        _, spec = model_transform_specs(cfg, args.backbone, len(manifest.classes))
        scored = score_real(fit.classifier, real, spec, torch.device("cpu"))
        out["real_top1"] = scored["top1"]
        out["real_top3"] = scored["top3"]
        out["real_by_camera"] = real_by_camera(scored, real.paths)
        out["real_per_class"] = {c["class"]: c["top1"] for c in scored["per_class"]}
    return out


def markdown(rows: list[dict], args) -> str:
    cams = sorted({k for r in rows for k in r.get("real_by_camera", {})})
    head = ["variant", "px", "epochs", "lr", "frozen", "aug", "val F1", "test F1", "real top-1"]
    head += [f"real {c}" for c in cams] + ["train s", "img/s"]
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = out / "finetune_recipe.json"
    rows: list[dict] = json.loads(done.read_text()) if args.append and done.exists() else []
    for text in args.variant or ["recipe:"]:
        name, overrides = parse_variant(text)
        print(f"=== {name}: {overrides}", flush=True)
        rows.append(run_variant(name, overrides, args, manifest, real))
        r = rows[-1]
        print(
            f"=== {name}: val {r['val_macro_f1']:.3f} test {r['test_macro_f1']:.3f} real "
            f"{r.get('real_top1', float('nan')):.3f} {r.get('real_by_camera', {})} "
            f"{r['train_seconds']:.0f} s",
            flush=True,
        )
        (out / "finetune_recipe.json").write_text(json.dumps(rows, indent=1))
        (out / "finetune_recipe.md").write_text(markdown(rows, args))
    print(f"written: {out / 'finetune_recipe.md'}")


if __name__ == "__main__":
    main()
