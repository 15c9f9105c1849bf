"""Audit dynamics: how the training rows' scores change while the model learns.

    python benchmarks/audit_dynamics.py --settings noise20-pairs,noise20-symmetric,noise0-symmetric

One in-process run per noise setting (``fit_local``, the quick profile's data and recipe as in
``benchmarks/noise_study.py --recipe quick``); after every epoch every training row is scored
with the eval transform (``logo_train.audit.score_split``, as the audit does after training).
Reported per setting:

* per epoch: how well the given label's probability finds the flipped labels (AUROC), and for
  how many flipped rows the model's class is the true one (it learns the flips late: the share
  peaks mid-run and falls as it memorises them);
* the probabilities averaged over the epochs from ``--average-from`` on (a temporal ensemble)
  against the last epoch's alone (what the pipeline's audit scores): AUROC, and what the
  cleaning round's rules (``logo_train.clean``) would act on — rows flagged, really wrong among
  them, and wrong labels left after a relabel round (unflagged flips plus rows relabelled to a
  wrong class).

Written: ``audit_dynamics.json`` and ``audit_dynamics.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from logo_train.audit import detection_metrics
from logo_train.clean import CleaningError, plan_cleaning
from logo_train.config import CleanConfig
from logo_train.data.shards import read_manifest

try:
    import noise_study as ns
except ImportError:  # run as a module from the repository root
    from benchmarks import noise_study as ns

ROOT = Path(__file__).resolve().parents[1]
RULES = {
    "p(label) < 0.1 (the default)": {"given_prob": 0.1},
    "the model predicts another class": {"given_prob": 0.0, "disagree": True},
}


def train_with_scores(cfg, args, uri: str, manifest) -> tuple[dict, np.ndarray, dict]:
    """Train once; the training rows' probabilities after every epoch, ``(E, N, C)``."""
    per_epoch: list[np.ndarray] = []
    columns: dict = {}

    def score(training, record: dict) -> None:
        scores, table = ns.train_scores(
            training.model, cfg, args.backbone, uri, manifest, training.device
        )
        per_epoch.append(scores.probabilities.astype(np.float32))
        if not columns:  # the labels are the same every epoch
            columns.update(
                given=np.asarray(table["label"].to_pylist()),
                truth=np.asarray(table["clean_label"].to_pylist()),
            )
        print(f"  epoch {record['epoch']}: training rows scored", flush=True)

    start = time.perf_counter()
    fit = ns._fit(cfg, args.backbone, uri, manifest, args, eval_every=cfg.train.epochs,
                  on_epoch_end=score)  # fmt: skip
    run = ns._scored(fit, cfg, args.backbone, uri, manifest, cfg.train.loss, start)
    run.pop("history")
    return run, np.stack(per_epoch), columns


def rule_counts(prob: np.ndarray, given: np.ndarray, truth: np.ndarray, names) -> dict:
    """What each rule of ``RULES`` does in a relabel round (``plan_cleaning``) on ``prob``."""
    n = len(given)
    predicted, confidence = prob.argmax(1), prob.max(1)
    given_prob = prob[np.arange(n), given]
    out = {}
    for name, fields in RULES.items():
        cfg = CleanConfig(mode="relabel", max_fraction=0.99, **fields)
        try:
            plan = plan_cleaning(
                given, given_prob, np.full(n, np.nan), predicted, confidence, 1 - given_prob,
                cfg, names,
            )  # fmt: skip
        except CleaningError as e:  # the pipeline's round would stop here too
            out[name] = {"refused": str(e)}
            continue
        kept, chosen = plan.keep, plan.suspected
        out[name] = {
            "acted_on": int(chosen.sum()),
            "really_wrong": int((chosen & (given != truth)).sum()),
            "wrong_left": int((plan.labels[kept] != truth[kept]).sum()),
        }
    return out


def analyse(probs: np.ndarray, given: np.ndarray, truth: np.ndarray, names, start: int) -> dict:
    """Per-epoch detection and the averaged-versus-last comparison (``start``: first epoch
    averaged, 1-based)."""
    n = probs.shape[1]
    flipped = given != truth
    rows = np.arange(n)
    both = flipped.any() and not flipped.all()  # AUROC needs flipped and right labels
    result: dict = {"flipped": int(flipped.sum()), "epochs": []}
    for e, prob in enumerate(probs, 1):
        record = {"epoch": e}
        if both:
            record["auroc"] = detection_metrics(flipped, -prob[rows, given])["auroc"]
            record["flipped_predicted_true"] = float(
                (prob[flipped].argmax(1) == truth[flipped]).mean()
            )
        result["epochs"].append(record)
    views = {
        "last epoch": probs[-1],
        f"mean of epochs {start}-{len(probs)}": probs[start - 1 :].mean(0),
    }
    for view, prob in views.items():
        entry = rule_counts(prob, given, truth, names)
        if both:
            entry["auroc"] = detection_metrics(flipped, -prob[rows, given])["auroc"]
        result[view] = entry
    return result


def markdown(results: dict, args) -> str:
    lines = [
        "# Audit dynamics",
        "",
        f"`{args.backbone}`, quick recipe, seed {args.seed}, loss `{results['loss']}`; machine: "
        f"{results['machine']}.",
        "",
    ]
    for setting, r in results["settings"].items():
        lines += [f"## {setting} ({r['flipped']} flipped labels)", ""]
        run = r["run"]
        lines += [f"Test macro-F1 {run['test_macro_f1']:.3f} (val {run['val_macro_f1']:.3f}).", ""]
        if "auroc" in r["epochs"][0]:
            lines += ["| epoch | " + " | ".join(str(e["epoch"]) for e in r["epochs"]) + " |"]
            lines += ["|---" * (len(r["epochs"]) + 1) + "|"]
            lines += ["| AUROC | " + " | ".join(f"{e['auroc']:.3f}" for e in r["epochs"]) + " |"]
            lines += [
                "| flipped rows predicted as their true class | "
                + " | ".join(f"{e['flipped_predicted_true']:.2f}" for e in r["epochs"])
                + " |",
                "",
            ]
        lines += [
            "| scores | AUROC | rule | acted on | really wrong | wrong left |",
            "|---|---|---|---|---|---|",
        ]
        for view in [k for k in r if k.startswith(("last", "mean"))]:
            for rule, c in r[view].items():
                if rule == "auroc":
                    continue
                auroc = f"{r[view]['auroc']:.3f}" if "auroc" in r[view] else "–"
                if "refused" in c:
                    lines.append(f"| {view} | {auroc} | {rule} | refused (JSON) | | |")
                    continue
                lines.append(
                    f"| {view} | {auroc} | {rule} | {c['acted_on']} | {c['really_wrong']} | "
                    f"{c['wrong_left']} |"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--settings", default="noise20-pairs,noise20-symmetric,noise0-symmetric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", default="", help="train.loss (default: the quick profile's)")
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--epochs", type=int, default=0, help="0: the recipe's train.epochs")
    p.add_argument("--average-from", type=int, default=3, help="first epoch averaged (1-based)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override (train.per_backbone's recipe still wins: use --epochs)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--work-dir", default="/tmp/logo-train-audit-dynamics")
    p.add_argument("--data-dir", default=None, help="shards root (default: <work-dir>/data-quick)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    args.recipe = "quick"
    torch.set_num_threads(args.threads)
    names = args.settings.split(",")
    known = [ns.setting_name(rate, kind) for rate, kind in ns.SETTINGS]
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"--settings: unknown {unknown}; known: {', '.join(known)}")
    cfg = ns.base_config(args, args.seed)
    if args.loss:
        cfg = cfg.with_train(loss=args.loss)
    if args.epochs:
        cfg = cfg.with_train(epochs=args.epochs)
    if args.average_from < 1 or args.average_from > cfg.train.epochs:
        p.error(f"--average-from must be in 1..{cfg.train.epochs} (train.epochs)")
    uris = ns.make_data(cfg, ns._data_dir(args, args.seed), names)
    results = {
        "loss": cfg.train.loss,
        "machine": ns._device_name(args.device or "cpu"),
        "settings": {},
    }
    for name in names:
        manifest = read_manifest(uris[name])
        print(f"{name}: {cfg.train.epochs} epochs, the training rows scored after each", flush=True)
        run, probs, cols = train_with_scores(cfg, args, uris[name], manifest)
        results["settings"][name] = {
            "run": run,
            **analyse(
                probs, cols["given"], cols["truth"], list(manifest.classes), args.average_from
            ),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit_dynamics.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "audit_dynamics.md").write_text(markdown(results, args))
    print(markdown(results, args))


if __name__ == "__main__":
    main()
