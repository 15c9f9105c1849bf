"""Noise study: what label noise costs each loss, and how well the audit finds the flips.

    python benchmarks/noise_study.py [--epochs 40] [--device cuda] [--out benchmarks/results]

For each noise setting (0%, 20% and 40% symmetric, 20% look-alike pairs) on the embedded
dataset at imbalance 20:1, one small backbone is trained with ``ce``, ``ce_weighted`` (the
reference recipe) and ``trust_penalty``: same data, seed, epochs and optimiser; the final
model of each run is scored. ``trust_penalty`` runs once per ``--penalty-weights`` value and
the one with the best *validation* macro-F1 (clean validation split) is reported; the test
split is only ever used for the reported numbers.

Written: ``noise_study.json`` (every run, with its history) and ``noise_study.md`` (the table):
clean-test macro-F1 and balanced accuracy; for noisy data, how well each score finds the
flipped training labels: AUROC and precision at k = number of flips, for the trust head, the
per-sample loss, and (with ``pip install cleanlab``, ``--cleanlab-folds K``) cleanlab's
``find_label_issues`` on K-fold out-of-sample probabilities of the ``ce_weighted`` model.

Training runs in one process (``logo_train.local``, the same model/loss/step code as the Ray
workers): the study trains dozens of models and is meant for one GPU. The shards are rendered
first (``--data-only`` renders them without training, e.g. to carry them to a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from logo_train.audit import detection_metrics, score_split
from logo_train.config import Config, load_config
from logo_train.data.shards import exists, join, read_manifest, read_split
from logo_train.local import evaluate_split, fit_local, model_transform_specs

ROOT = Path(__file__).resolve().parents[1]
LOSS_ORDER = ["ce", "ce_weighted", "trust_penalty"]
SETTINGS = [(0.0, "symmetric"), (0.2, "symmetric"), (0.4, "symmetric"), (0.2, "pairs")]


def setting_name(rate: float, kind: str) -> str:
    return f"noise{int(round(100 * rate))}-{kind}"


def base_config(args: argparse.Namespace) -> Config:
    return load_config(
        ROOT / "configs/quick.yaml",
        [
            f"output_dir={args.work_dir}",
            "name=noise-study",
            f"model.image_size={args.image_size}",
            f"data.synth.image_size={args.image_size}",
            f"data.synth.images_per_class={args.images_per_class}",
            f"data.synth.imbalance_ratio={args.imbalance}",
            f"data.synth.difficulty={args.difficulty}",
            f"data.synth.seed={args.seed}",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            f"train.lr={args.lr}",
            f"train.trust_warmup_epochs={args.trust_warmup}",
            f"train.trust_rescale={args.trust_rescale}",
            f"train.seed={args.seed}",
        ],
    )


def make_data(cfg: Config, data_dir: str) -> dict[str, str]:
    uris = {}
    for rate, kind in SETTINGS:
        name = setting_name(rate, kind)
        uri = join(data_dir, name)
        if not exists(join(uri, "manifest.json")):
            from logo_train.data.synth import generate  # needs the artwork packages

            synth = {**cfg.data.synth.__dict__, "noise_rate": rate, "noise_kind": kind}
            generate(type(cfg.data.synth)(**synth), uri, rows_per_shard=2000, progress=False)
            print(f"rendered {name} -> {uri}", flush=True)
        uris[name] = uri
    return uris


def with_train(cfg: Config, **fields) -> Config:
    from logo_train.config import config_from_dict, config_to_dict

    d = config_to_dict(cfg)
    d["train"].update(fields)
    return config_from_dict(d)


def train_scores(model, cfg: Config, backbone: str, uri: str, manifest, device):
    """Audit scores (trust, loss, probabilities) of every training row, and which are flipped."""
    _, spec = model_transform_specs(cfg, backbone, len(manifest.classes))
    scores, table = score_split(model, uri, spec, device, ["image", "label", "is_noisy"], 512)
    return scores, np.asarray(table["is_noisy"].to_pylist(), bool)


def _fit(cfg, backbone, uri, manifest, args, **kwargs):
    return fit_local(
        cfg, backbone, uri, manifest, device=args.device, loader_workers=args.loader_workers,
        echo=None, **kwargs,
    )  # fmt: skip


def run_one(cfg, backbone, uri, manifest, args, label: str) -> dict:
    start = time.perf_counter()
    fit = _fit(cfg, backbone, uri, manifest, args, eval_every=args.eval_every)
    device = next(fit.model.parameters()).device
    test = evaluate_split(fit.classifier, cfg, backbone, uri, manifest, "test")
    val = fit.history[-1]["val_macro_f1"]
    scores, is_noisy = train_scores(fit.model, cfg, backbone, uri, manifest, device)
    out = {
        "run": label,
        "loss": cfg.train.loss,
        "penalty_weight": cfg.train.penalty_weight if cfg.train.loss == "trust_penalty" else None,
        "val_macro_f1": val,
        "test_macro_f1": test["macro_f1"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_accuracy": test["accuracy"],
        "seconds": time.perf_counter() - start,
        "history": fit.history,
    }
    if is_noisy.any():
        out["detect_loss"] = detection_metrics(is_noisy, scores.loss)
        if scores.has_trust:
            out["detect_trust"] = detection_metrics(is_noisy, 1.0 - scores.trust)
            out["mean_trust_clean"] = float(scores.trust[~is_noisy].mean())
            out["mean_trust_flipped"] = float(scores.trust[is_noisy].mean())
    print(
        f"  {label:<36} val F1 {val:.3f}  test F1 {test['macro_f1']:.3f}  "
        f"bal.acc {test['balanced_accuracy']:.3f}  "
        + (f"AUROC trust {out['detect_trust']['auroc']:.3f} " if "detect_trust" in out else "")
        + (f"AUROC loss {out['detect_loss']['auroc']:.3f} " if "detect_loss" in out else "")
        + f"({out['seconds']:.0f} s)",
        flush=True,
    )
    return out


def cleanlab_fold(cfg, backbone, uri, manifest, args, fold: int) -> tuple[list, np.ndarray]:
    """Train ``ce_weighted`` on all folds but ``fold``; its probabilities on the held-out rows."""
    table = read_split(uri, "train", ["label"])
    folds = np.random.default_rng(args.seed).permutation(table.num_rows) % args.cleanlab_folds
    fit = _fit(
        cfg, backbone, uri, manifest, args,
        eval_every=cfg.train.epochs, train_indices=np.flatnonzero(folds != fold),
    )  # fmt: skip
    device = next(fit.model.parameters()).device
    scores, _ = train_scores(fit.model, cfg, backbone, uri, manifest, device)
    held = np.flatnonzero(folds == fold)
    return held.tolist(), scores.probabilities[held]


def cleanlab_row(uri: str, folds: list[tuple[list, np.ndarray]], args, seconds: float) -> dict:
    """cleanlab.find_label_issues on the K-fold out-of-sample probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    table = read_split(uri, "train", ["label", "is_noisy"])
    labels = np.asarray(table["label"].to_pylist(), np.int64)
    is_noisy = np.asarray(table["is_noisy"].to_pylist(), bool)
    probs = np.zeros((len(labels), folds[0][1].shape[1]), np.float32)
    for held, p in folds:
        probs[held] = p
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    k = int(is_noisy.sum())
    hits = int(is_noisy[ranked[:k]].sum())
    detect = detection_metrics(is_noisy, -quality)
    out = {
        "run": f"cleanlab ({args.cleanlab_folds}-fold ce_weighted)",
        "issues_found": len(ranked),
        "issues_found_recall": float(is_noisy[ranked].sum() / max(k, 1)),
        "detect_cleanlab": {**detect, "precision_at_k": hits / k if k else math.nan},
        "seconds": seconds,
    }
    print(
        f"  {out['run']:<28} AUROC {detect['auroc']:.3f}  precision@k {hits / max(k, 1):.3f}"
        f"  issues found {len(ranked)}",
        flush=True,
    )
    return out


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Backbone {args.backbone}, {args.image_size} px, imbalance {args.imbalance:g}:1, "
        f"{args.epochs} epochs (final model), batch {args.batch_size}, lr {args.lr:g}, "
        f"trust_rescale {args.trust_rescale}, "
        f"seed {args.seed}; trust_penalty's penalty_weight chosen from "
        f"{args.penalty_weights} by clean-validation macro-F1. Device: {results['device']}.",
        "",
        "| noise | loss | test macro-F1 | test bal. acc | AUROC trust | AUROC loss "
        "| P@k trust | P@k loss | k |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(x):
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    for name, s in results["settings"].items():
        for r in s["runs"]:
            dt, dl = r.get("detect_trust", {}), r.get("detect_loss", {})
            loss = r["loss"] + (
                f" (pw {r['penalty_weight']:g})" if r["penalty_weight"] is not None else ""
            )
            lines.append(
                f"| {name} | {loss} | {fmt(r['test_macro_f1'])} "
                f"| {fmt(r['test_balanced_accuracy'])} | {fmt(dt.get('auroc'))} "
                f"| {fmt(dl.get('auroc'))} | {fmt(dt.get('precision_at_k'))} "
                f"| {fmt(dl.get('precision_at_k'))} | {dl.get('k', '–')} |"
            )
        if s.get("cleanlab"):
            c = s["cleanlab"]["detect_cleanlab"]
            lines.append(
                f"| {name} | {s['cleanlab']['run']} | – | – | – | {fmt(c['auroc'])} (cleanlab) "
                f"| – | {fmt(c['precision_at_k'])} (cleanlab) | {c['k']} |"
            )
    lines += ["", "Trust penalty vs ce_weighted (clean-test macro-F1, points):", ""]
    clean = results["settings"].get(setting_name(0.0, "symmetric"))
    clean_cw = (
        clean["best"]["ce_weighted"]["test_macro_f1"]
        if clean and "ce_weighted" in clean["best"]
        else args.clean_reference
    )
    for name, s in results["settings"].items():
        if not {"ce_weighted", "trust_penalty"} <= set(s["best"]):
            continue
        cw = s["best"]["ce_weighted"]["test_macro_f1"]
        tp = s["best"]["trust_penalty"]["test_macro_f1"]
        line = f"- {name}: {100 * (tp - cw):+.1f}"
        if clean_cw is not None and name != setting_name(0.0, "symmetric") and clean_cw > cw:
            line += (
                f"; noise costs ce_weighted {100 * (clean_cw - cw):.1f} points, trust_penalty "
                f"wins back {100 * (tp - cw) / (clean_cw - cw):.0f}% of that"
            )
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--trust-warmup", type=int, default=5)
    p.add_argument(
        "--trust-rescale",
        choices=["true", "false"],
        default="true",
        help="train.trust_rescale (the recorded study of docs/benchmarks.md used false)",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--images-per-class", type=int, default=300)
    p.add_argument("--imbalance", type=float, default=20.0)
    p.add_argument("--difficulty", type=float, default=0.5)
    p.add_argument("--penalty-weights", default="0.5,1,2")
    p.add_argument("--settings", default="all", help="comma list of setting names, or all")
    p.add_argument(
        "--runs", default="all", help="only these runs: 'setting:loss[:penalty_weight]',..."
    )
    p.add_argument("--cleanlab-settings", default="all", help="comma list, or all")
    p.add_argument("--cleanlab-folds", type=int, default=0, help="0: no cleanlab row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clean-reference",
        type=float,
        default=None,
        help="clean-trained ce_weighted test macro-F1 when noise0 is not in this run",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--loader-workers", type=int, default=1, help="loader processes per run")
    p.add_argument("--parallel", type=int, default=1, help="runs at the same time")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--work-dir", default="/tmp/logo-train-noise-study")
    p.add_argument("--data-dir", default=None, help="shards root (default: <work-dir>/data)")
    p.add_argument("--data-only", action="store_true", help="render the shards and stop")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()

    cfg = base_config(args)
    uris = make_data(cfg, args.data_dir or f"{args.work_dir}/data")
    if args.data_only:
        return
    wanted = list(uris) if args.settings == "all" else args.settings.split(",")
    weights = [float(w) for w in args.penalty_weights.split(",")]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {"args": vars(args), "device": _device_name(device), "settings": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_cleanlab = args.cleanlab_folds > 1 and _has_cleanlab()
    jobs = []
    for name in wanted:
        manifest = read_manifest(uris[name])
        print(
            f"{name}: {manifest.split_rows('train')} train rows, "
            f"{manifest.noisy_counts.get('train', 0)} flipped",
            flush=True,
        )
        trains = [{"loss": "ce"}, {"loss": "ce_weighted"}] + [
            {"loss": "trust_penalty", "penalty_weight": w} for w in weights
        ]
        jobs += [(name, "run", t) for t in trains if _selected(args.runs, name, t)]
        cleanlab_here = args.cleanlab_settings == "all" or name in args.cleanlab_settings
        if use_cleanlab and cleanlab_here and manifest.noisy_counts.get("train", 0):
            jobs += [(name, "fold", k) for k in range(args.cleanlab_folds)]
    start = time.perf_counter()
    done = _execute(jobs, uris, args, out / "noise_study_runs.jsonl")
    for name in wanted:
        runs = sorted(
            (r for (n, kind, _), r in done if n == name and kind == "run"),
            key=lambda r: (LOSS_ORDER.index(r["loss"]), r["penalty_weight"] or 0),
        )
        best = {r["loss"]: r for r in runs if r["loss"] != "trust_penalty"}
        trust_runs = [r for r in runs if r["loss"] == "trust_penalty"]
        if trust_runs:
            best["trust_penalty"] = max(trust_runs, key=lambda r: r["val_macro_f1"])
        setting = {"runs": runs, "best": best}
        folds = [r for (n, kind, _), r in done if n == name and kind == "fold"]
        if folds:
            setting["cleanlab"] = cleanlab_row(uris[name], folds, args, 0.0)
        results["settings"][name] = setting
    results["wall_seconds"] = time.perf_counter() - start
    (out / "noise_study.json").write_text(json.dumps(results, indent=2, default=float))
    table = markdown(results, args)
    (out / "noise_study.md").write_text(table)
    print(table)


def _has_cleanlab() -> bool:
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        print("cleanlab not installed (pip install -e '.[study]'): no cleanlab rows", flush=True)
        return False
    return True


def _job(job, uris: dict[str, str], args: argparse.Namespace):
    name, kind, spec = job
    torch.set_num_threads(max(1, args.threads))
    cfg = base_config(args)
    uri = uris[name]
    manifest = read_manifest(uri)
    if kind == "fold":
        c = with_train(cfg, loss="ce_weighted")
        return job, cleanlab_fold(c, args.backbone, uri, manifest, args, spec)
    label = f"{name} {spec['loss']}" + (
        f" pw={spec['penalty_weight']:g}" if "penalty_weight" in spec else ""
    )
    return job, run_one(with_train(cfg, **spec), args.backbone, uri, manifest, args, label)


def _selected(runs: str, setting: str, train: dict) -> bool:
    """``--runs``: 'all' or entries 'setting:loss[:penalty_weight]'."""
    if runs == "all":
        return True
    key = [setting, train["loss"]] + (
        [f"{train['penalty_weight']:g}"] if "penalty_weight" in train else []
    )
    return any(entry.split(":") == key for entry in runs.split(","))


def _execute(jobs, uris, args, jsonl: Path):
    """Every job, ``--parallel`` at a time (separate processes; one GPU holds many small runs).
    Each finished run is appended to ``jsonl`` at once, so an interrupted study keeps them."""

    def keep(result):
        (job, value) = result
        if job[1] == "run":
            with jsonl.open("a") as f:
                f.write(json.dumps({"setting": job[0], **value}, default=float) + "\n")
        return result

    if args.parallel <= 1:
        return [keep(_job(j, uris, args)) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # not multiprocessing.Pool: its daemonic workers may not start DataLoader processes
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(args.parallel, mp_context=ctx) as pool:
        futures = [pool.submit(_job, j, uris, args) for j in jobs]
        return [keep(f.result()) for f in as_completed(futures)]


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
