"""Noise study: what label noise costs each loss, and how well the audit finds the flips.

    python benchmarks/noise_study.py [--epochs 40] [--device cuda] [--out benchmarks/results]

For each noise setting (0%, 20% and 40% symmetric, 20% look-alike pairs) on the embedded
dataset at imbalance 20:1, one small backbone is trained with ``ce``, ``ce_weighted`` (the
reference recipe) and ``trust_penalty``: same data, seed, epochs and optimiser; the final
model of each run is scored. ``trust_penalty`` runs once per ``--penalty-weights`` value and
the one with the best *validation* macro-F1 (clean validation split) is reported; the test
split is only ever used for the reported numbers.

With ``--clean-modes drop,relabel`` every ``trust_penalty`` and ``gce`` run is followed by a
cleaning round per mode (``logo_train.clean``, the pipeline's ``train.clean``: act on the labels
its audit suspects, train the same backbone again on what is left); with ``--cleanlab-folds K`` (and
``pip install cleanlab``) cleanlab's ``CleanLearning`` is the peer: K-fold out-of-sample
probabilities of ``ce_weighted`` models, its label issues pruned, the same backbone trained
again with ``ce_weighted``. ``--seeds 0,1,2`` repeats everything per seed (data and training).
``--clean-losses ce_weighted,same`` trains each cleaning round once per loss listed (the
pipeline's ``train.clean.loss``; ``same``: round 1's); ``--set train.gce_q=0.4`` overrides a
config field for every run.

Written: ``noise_study.json`` (every run, with its history) and ``noise_study.md`` (the tables):
clean-test macro-F1 and balanced accuracy, mean and spread over seeds; for noisy data, how well
each score finds the flipped training labels (AUROC and precision at k = number of flips) and
how much of what noise costs ``ce_weighted`` each method wins back. ``--recipe quick`` trains
with the quick profile's data and backbone recipe (configs/quick.yaml) instead of the study's.

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
from sklearn.base import BaseEstimator, ClassifierMixin

from logo_train.audit import detection_metrics, score_split
from logo_train.config import CleanConfig, Config, config_from_dict, config_to_dict, load_config
from logo_train.data.shards import read_manifest, read_split
from logo_train.local import evaluate_split, fit_local, model_transform_specs
from logo_train.storage import exists, join

ROOT = Path(__file__).resolve().parents[1]
LOSS_ORDER = ["ce", "ce_weighted", "gce", "trust_penalty"]
CLEANED_LOSSES = ("trust_penalty", "gce")
"""Runs followed by the --clean-modes rounds (the pipeline cleans after any loss)."""
SETTINGS = [(0.0, "symmetric"), (0.2, "symmetric"), (0.4, "symmetric"), (0.2, "pairs")]
CLEANLEARNING = "cleanlab CleanLearning"
SAME_LOSS = "same"
"""--clean-losses entry: round 2 trains with round 1's loss."""


def setting_name(rate: float, kind: str) -> str:
    return f"noise{int(round(100 * rate))}-{kind}"


def base_config(args: argparse.Namespace, seed: int) -> Config:
    """The study's config for ``seed``: ``--recipe study`` (the flags below) or ``quick``
    (configs/quick.yaml's data and ``--backbone``'s recipe; only noise and seed change)."""
    common = [
        f"output_dir={args.work_dir}",
        "name=noise-study",
        f"data.synth.seed={seed}",
        f"train.seed={seed}",
    ] + list(args.set)
    if args.recipe == "quick":
        cfg = load_config(ROOT / "configs/quick.yaml", common)
        return cfg.for_backbone(args.backbone)
    return load_config(
        ROOT / "configs/quick.yaml",
        common
        + [
            f"model.image_size={args.image_size}",
            f"data.synth.image_size={args.image_size}",
            f"data.synth.images_per_class={args.images_per_class}",
            f"data.synth.imbalance_ratio={args.imbalance}",
            f"data.synth.difficulty={args.difficulty}",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            f"train.lr={args.lr}",
            f"train.trust_warmup_epochs={args.trust_warmup}",
            f"train.trust_rescale={args.trust_rescale}",
        ],
    )


def make_data(cfg: Config, data_dir: str, names: list[str]) -> dict[str, str]:
    uris = {}
    for rate, kind in SETTINGS:
        name = setting_name(rate, kind)
        if name not in names:
            continue
        uri = join(data_dir, name)
        if not exists(join(uri, "manifest.json")):
            from logo_train.data.synth import generate  # needs the artwork packages

            synth = {**cfg.data.synth.__dict__, "noise_rate": rate, "noise_kind": kind}
            generate(type(cfg.data.synth)(**synth), uri, rows_per_shard=2000, progress=False)
            print(f"rendered {name} -> {uri}", flush=True)
        uris[name] = uri
    return uris


def train_scores(model, cfg: Config, backbone: str, uri: str, manifest, device):
    """Audit scores (trust, loss, probabilities) of every training row, and which are flipped."""
    _, spec = model_transform_specs(cfg, backbone, len(manifest.classes))
    columns = ["image", "label", "is_noisy", "clean_label"]
    scores, table = score_split(model, uri, spec, device, columns, 512)
    return scores, table


def _fit(cfg, backbone, uri, manifest, args, **kwargs):
    return fit_local(
        cfg, backbone, uri, manifest, device=args.device, loader_workers=args.loader_workers,
        echo=None, **kwargs,
    )  # fmt: skip


def _penalty_weight(cfg: Config) -> float | None:
    return cfg.train.penalty_weight if cfg.train.loss == "trust_penalty" else None


def _scored(fit, cfg, backbone, uri, manifest, label: str, start: float, **extra) -> dict:
    test = evaluate_split(fit.classifier, cfg, backbone, uri, manifest, "test")
    return {
        "run": label,
        "loss": cfg.train.loss,
        "penalty_weight": _penalty_weight(cfg),
        "val_macro_f1": fit.history[-1]["val_macro_f1"],
        "test_macro_f1": test["macro_f1"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_accuracy": test["accuracy"],
        "seconds": time.perf_counter() - start,
        "history": fit.history,
        **extra,
    }


def _print(out: dict) -> None:
    print(
        f"  {out['run']:<44} val F1 {out['val_macro_f1']:.3f}  test F1 "
        f"{out['test_macro_f1']:.3f}  bal.acc {out['test_balanced_accuracy']:.3f}  "
        + (f"AUROC trust {out['detect_trust']['auroc']:.3f} " if "detect_trust" in out else "")
        + (f"AUROC loss {out['detect_loss']['auroc']:.3f} " if "detect_loss" in out else "")
        + (f"{out['clean_line']} " if "clean_line" in out else "")
        + f"({out['seconds']:.0f} s)",
        flush=True,
    )


def run_one(cfg, backbone, uri, manifest, args, label: str) -> list[dict]:
    """One run with ``cfg``'s loss; for ``trust_penalty`` and ``gce`` with ``--clean-modes``, a
    cleaning round per mode after it. Returns the run and its cleaning rounds."""
    start = time.perf_counter()
    fit = _fit(cfg, backbone, uri, manifest, args, eval_every=args.eval_every)
    device = next(fit.model.parameters()).device
    out = _scored(fit, cfg, backbone, uri, manifest, label, start)
    scores, table = train_scores(fit.model, cfg, backbone, uri, manifest, device)
    is_noisy = np.asarray(table["is_noisy"].to_pylist(), bool)
    if is_noisy.any():
        out["detect_loss"] = detection_metrics(is_noisy, scores.loss)
        if scores.has_trust:
            out["detect_trust"] = detection_metrics(is_noisy, 1.0 - scores.trust)
            out["mean_trust_clean"] = float(scores.trust[~is_noisy].mean())
            out["mean_trust_flipped"] = float(scores.trust[is_noisy].mean())
    _print(out)
    runs = [out]
    if cfg.train.loss in CLEANED_LOSSES:
        from logo_train.clean import CleaningError

        for mode in [m for m in args.clean_modes.split(",") if m]:
            for then in args.clean_losses.split(","):
                name = clean_name(mode, then)
                try:
                    runs.append(
                        clean_round(
                            cfg, backbone, uri, manifest, args, label, mode, then, scores, table
                        )
                    )
                except CleaningError as e:  # the pipeline would stop here: round 1 stays
                    print(f"  {label} + {name}: refused ({e}); round 1's model stands", flush=True)
                    refused = {k: v for k, v in out.items() if not k.startswith("detect")}
                    runs.append(
                        {**refused, "run": f"{label} + {name}", "clean_mode": name,
                         "cleaning": {"refused": str(e)}}
                    )  # fmt: skip
    return runs


def clean_name(mode: str, then: str) -> str:
    """A cleaning round's name in the tables: the mode, and the round-2 loss when it is not
    round 1's (``--clean-losses``)."""
    return mode if then == SAME_LOSS else f"{mode}, then {then}"


def clean_round(cfg, backbone, uri, manifest, args, label, mode, then, scores, table) -> dict:
    """``logo_train.clean`` on the run's audit scores, then the same backbone and recipe again
    on the rows left (relabelled ones with their new label), with the loss ``then`` (the
    pipeline's ``train.clean.loss``; ``SAME_LOSS``: round 1's)."""
    from logo_train.clean import plan_cleaning, round_loss

    start = time.perf_counter()
    given = np.asarray(table["label"].to_pylist(), np.int64)
    truth = np.asarray(table["clean_label"].to_pylist(), np.int64)
    noisy = given != truth
    # 'relabel/trust': trust below 0.5 alone; 'relabel/any': that or any disagreement;
    # plain 'relabel': the --clean-* flags (default: train.clean's rule)
    base, _, rule = mode.partition("/")
    clean_cfg = CleanConfig(
        mode=base,
        given_prob=0.0 if rule else args.clean_given_prob,
        threshold=0.5 if rule else args.clean_threshold,
        disagree=rule == "any" or (not rule and args.clean_disagree == "true"),
        fraction=args.clean_fraction,
        relabel_confidence=args.relabel_confidence,
        max_fraction=args.clean_max_fraction,
        loss="" if then == SAME_LOSS else then,
        noisy_fraction=args.noisy_fraction,
    )
    given_prob = scores.probabilities[np.arange(len(given)), given]
    plan = plan_cleaning(
        given, given_prob, scores.trust, scores.predicted, scores.probabilities.max(1),
        scores.suspicion(), clean_cfg, list(manifest.classes), cfg.train.batch_size,
    )  # fmt: skip
    keep = np.flatnonzero(plan.keep)
    round1 = cfg
    loss, _ = round_loss(clean_cfg, cfg.train.loss, plan)
    cfg = cfg.with_train(loss=loss)
    fit = _fit(
        cfg, backbone, uri, manifest, args,
        eval_every=args.eval_every, train_indices=keep, train_labels=plan.labels,
    )  # fmt: skip
    relabelled = plan.action == "relabelled"
    counts = {
        "dropped": plan.dropped,
        "relabelled": plan.relabelled,
        "flipped_acted_on": int((plan.suspected & noisy).sum()),
        "clean_acted_on": int((plan.suspected & ~noisy).sum()),
        "relabelled_right": int((relabelled & (plan.labels == truth)).sum()),
        "wrong_left": int((plan.labels[keep] != truth[keep]).sum()),
        "rule": plan.rule,
    }
    name = clean_name(mode, then)
    out = _scored(
        fit, cfg, backbone, uri, manifest, f"{label} + {name}", start,
        clean_mode=name, cleaning=counts, round_loss=loss,
        clean_line=f"{name}: -{plan.dropped} ~{plan.relabelled}, {counts['wrong_left']} wrong left",
    )  # fmt: skip
    # the method is round 1's (its loss and penalty weight); round 2's loss is in the name
    out["loss"], out["penalty_weight"] = round1.train.loss, _penalty_weight(round1)
    _print(out)
    return out


def cleanlearning_run(cfg, backbone, uri, manifest, args, label: str) -> dict:
    """cleanlab's ``CleanLearning`` around the same backbone: K-fold out-of-sample
    probabilities of ``ce_weighted`` models, the label issues they show pruned, the backbone
    trained again (``ce_weighted``) on the rest."""
    from cleanlab.classification import CleanLearning

    start = time.perf_counter()
    c = cfg.with_train(loss="ce_weighted")
    table = read_split(uri, "train", ["label", "is_noisy"])
    labels = np.asarray(table["label"].to_pylist(), np.int64)
    is_noisy = np.asarray(table["is_noisy"].to_pylist(), bool)
    clf = LocalModel(config_to_dict(c), backbone, uri, args.device, args.loader_workers)
    # n_jobs 1: cleanlab's own process pool fails inside the study's spawned workers
    learner = CleanLearning(
        clf,
        seed=c.train.seed,
        cv_n_folds=args.cleanlab_folds,
        find_label_issues_kwargs={"n_jobs": 1},
    )
    learner.fit(np.arange(len(labels))[:, None], labels)
    issues = learner.get_label_issues()
    flagged = issues["is_label_issue"].to_numpy()
    quality = issues["label_quality"].to_numpy()
    detect = detection_metrics(is_noisy, -quality) if is_noisy.any() else {}
    out = _scored(
        learner.clf.fit_, c, backbone, uri, manifest, label, start,
        cleanlab_issues=int(flagged.sum()), cleanlab_issues_flipped=int((flagged & is_noisy).sum()),
        detect_cleanlab=detect,
        clean_line=f"pruned {int(flagged.sum())} ({int((flagged & is_noisy).sum())} flipped)",
    )  # fmt: skip
    out["loss"] = CLEANLEARNING
    _print(out)
    return out


class LocalModel(ClassifierMixin, BaseEstimator):
    """``fit_local`` behind scikit-learn's interface, for cleanlab: ``X`` holds indices of the
    train split's rows (one column), ``y`` their labels; ``predict_proba`` scores those rows
    with the eval transform."""

    def __init__(self, config=None, backbone="resnet10t", uri="", device=None, loader_workers=1):
        self.config = config
        self.backbone = backbone
        self.uri = uri
        self.device = device
        self.loader_workers = loader_workers

    def fit(self, X, y):
        cfg = config_from_dict(self.config)
        manifest = read_manifest(self.uri)
        rows = np.asarray(X).reshape(-1).astype(np.int64)
        labels = np.asarray(read_split(self.uri, "train", ["label"])["label"].to_pylist())
        labels[rows] = np.asarray(y)
        self.classes_ = np.arange(len(manifest.classes))
        self.fit_ = fit_local(
            cfg, self.backbone, self.uri, manifest, device=self.device, echo=None,
            loader_workers=self.loader_workers, eval_every=cfg.train.epochs,
            train_indices=rows, train_labels=labels,
        )  # fmt: skip
        return self

    def predict_proba(self, X):
        cfg = config_from_dict(self.config)
        manifest = read_manifest(self.uri)
        device = next(self.fit_.model.parameters()).device
        scores, _ = train_scores(
            self.fit_.classifier, cfg, self.backbone, self.uri, manifest, device
        )
        return scores.probabilities[np.asarray(X).reshape(-1).astype(np.int64)]

    def predict(self, X):
        return self.predict_proba(X).argmax(1)


# --- tables -----------------------------------------------------------------------------------


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _method(r: dict) -> str:
    if r["loss"] == CLEANLEARNING:
        return CLEANLEARNING
    name = r["loss"] + (f" (pw {r['penalty_weight']:g})" if r["penalty_weight"] is not None else "")
    return name + (f" + {r['clean_mode']}" if r.get("clean_mode") else "")


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown(results: dict, args: argparse.Namespace) -> str:
    seeds = sorted({int(k) for s in results["settings"].values() for k in s["seeds"]})
    lines = [
        f"Recipe {args.recipe}: {results['recipe']}. Seeds {seeds} (data and training; "
        "mean ± standard deviation over the seeds a setting ran with). Device: "
        f"{results['device']}. trust_penalty's penalty_weight chosen from "
        f"{args.penalty_weights} by clean-validation macro-F1; the cleaning rounds follow that "
        "run.",
        "",
        "| noise | method | seeds | test macro-F1 | test bal. acc | acted on (really wrong) "
        "| wrong labels left | AUROC trust | P@k trust |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, dict[str, list[float]]] = {}
    for name, s in results["settings"].items():
        methods: dict[str, list[dict]] = {}
        for per_seed in s["seeds"].values():
            for r in per_seed["best"].values():
                methods.setdefault(_method_key(r), []).append(r)
        summary[name] = {m: [r["test_macro_f1"] for r in rs] for m, rs in methods.items()}
        for m in sorted(methods, key=_method_order):
            rs = methods[m]
            refused = sum(1 for r in rs if "refused" in r.get("cleaning", {}))
            c = [r["cleaning"] for r in rs if r.get("cleaning") and "refused" not in r["cleaning"]]
            acted = (
                f"{np.mean([x['dropped'] + x['relabelled'] for x in c]):.0f} "
                f"({np.mean([x['flipped_acted_on'] for x in c]):.0f})"
                if c
                else (
                    f"{np.mean([r['cleanlab_issues'] for r in rs]):.0f} "
                    f"({np.mean([r['cleanlab_issues_flipped'] for r in rs]):.0f})"
                    if "cleanlab_issues" in rs[0]
                    else "–"
                )
            )
            left = f"{np.mean([x['wrong_left'] for x in c]):.0f}" if c else "–"
            if refused:
                acted += f"; refused in {refused} seed(s): round 1 stands"
            dt = [r["detect_trust"] for r in rs if "detect_trust" in r]
            lines.append(
                f"| {name} | {_method(rs[0])} | {len(rs)} "
                f"| {_mean_spread([r['test_macro_f1'] for r in rs])} "
                f"| {_mean_spread([r['test_balanced_accuracy'] for r in rs])} | {acted} | {left} "
                f"| {_fmt(np.mean([d['auroc'] for d in dt]) if dt else None)} "
                f"| {_fmt(np.mean([d['precision_at_k'] for d in dt]) if dt else None)} |"
            )
    lines += ["", "Won back (of what noise costs ce_weighted: clean-trained minus noisy-trained "
              "clean-test macro-F1, means over seeds):", ""]  # fmt: skip
    clean = summary.get(setting_name(0.0, "symmetric"), {}).get("ce_weighted")
    clean_cw = float(np.mean(clean)) if clean else args.clean_reference
    for name, methods in summary.items():
        if "ce_weighted" not in methods or name == setting_name(0.0, "symmetric"):
            if name == setting_name(0.0, "symmetric") and "ce_weighted" in methods:
                cw = float(np.mean(methods["ce_weighted"]))
                lines.append(
                    f"- {name}: "
                    + ", ".join(
                        f"{m} {100 * (float(np.mean(v)) - cw):+.1f} points vs ce_weighted"
                        for m, v in methods.items()
                        if m != "ce_weighted"
                    )
                )
            continue
        cw = float(np.mean(methods["ce_weighted"]))
        if clean_cw is None or clean_cw <= cw:
            continue
        cost = clean_cw - cw
        parts = [
            f"{m} {100 * (float(np.mean(v)) - cw) / cost:.0f}%"
            for m, v in methods.items()
            if m not in ("ce", "ce_weighted")
        ]
        lines.append(
            f"- {name}: noise costs ce_weighted {100 * cost:.1f} points; " + ", ".join(parts)
        )
    return "\n".join(lines) + "\n"


def _method_key(r: dict) -> str:
    if r["loss"] == CLEANLEARNING:
        return CLEANLEARNING
    return r["loss"] + (f" + {r['clean_mode']}" if r.get("clean_mode") else "")


def _method_order(m: str) -> tuple:
    base = m.split(" + ")[0]
    return (LOSS_ORDER.index(base) if base in LOSS_ORDER else len(LOSS_ORDER), m)


# --- driver -----------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", choices=["study", "quick"], default="study")
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
    p.add_argument(
        "--penalty-weights", default=None, help="comma list (default: the recipe's value)"
    )
    p.add_argument("--losses", default="ce,ce_weighted,trust_penalty")
    p.add_argument("--settings", default="all", help="comma list of setting names, or all")
    p.add_argument(
        "--runs", default="all", help="only these runs: 'setting:loss[:penalty_weight]',..."
    )
    p.add_argument(
        "--clean-modes",
        default="",
        help="cleaning rounds after trust_penalty: drop, relabel (the --clean-* rule); "
        "'/trust' after one: trust < 0.5 alone, '/any': that or any disagreement",
    )
    p.add_argument(
        "--clean-losses",
        default=SAME_LOSS,
        help="comma list: the loss each cleaning round trains with (train.clean.loss: a loss, "
        f"or auto); '{SAME_LOSS}': round 1's",
    )
    p.add_argument("--noisy-fraction", type=float, default=CleanConfig.noisy_fraction)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run (e.g. train.gce_q=0.4); repeatable",
    )
    p.add_argument("--clean-threshold", type=float, default=CleanConfig.threshold)
    p.add_argument("--clean-given-prob", type=float, default=CleanConfig.given_prob)
    p.add_argument(
        "--clean-disagree",
        choices=["true", "false"],
        default="true" if CleanConfig.disagree else "false",
    )
    p.add_argument("--clean-fraction", type=float, default=CleanConfig.fraction)
    p.add_argument("--relabel-confidence", type=float, default=CleanConfig.relabel_confidence)
    p.add_argument("--clean-max-fraction", type=float, default=0.7)
    p.add_argument("--cleanlab-settings", default="all", help="comma list, or all")
    p.add_argument("--cleanlab-folds", type=int, default=0, help="0: no CleanLearning row")
    p.add_argument("--seeds", default="0", help="comma list")
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

    seeds = [int(x) for x in args.seeds.split(",")]
    wanted = (
        [setting_name(r, k) for r, k in SETTINGS]
        if args.settings == "all"
        else args.settings.split(",")
    )
    uris = {
        seed: make_data(base_config(args, seed), _data_dir(args, seed), wanted) for seed in seeds
    }
    if args.data_only:
        return
    cfg0 = base_config(args, seeds[0])
    if args.penalty_weights is None:
        args.penalty_weights = f"{cfg0.train.penalty_weight:g}"
    weights = [float(w) for w in args.penalty_weights.split(",")]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tc = cfg0.train
    results = {
        "args": vars(args),
        "device": _device_name(device),
        "recipe": (
            f"{args.backbone}, {cfg0.model.image_size} px, {cfg0.data.synth.images_per_class} "
            f"images in the head class, imbalance {cfg0.data.synth.imbalance_ratio:g}:1, "
            f"difficulty {cfg0.data.synth.difficulty:g}, {tc.epochs} epochs (final model), "
            f"{tc.optimizer} lr {tc.lr:g}, batch {tc.batch_size}, augment "
            f"{cfg0.augment.strength:g}, trust warm-up {tc.trust_warmup_epochs}"
        ),
        "settings": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_cleanlab = args.cleanlab_folds > 1 and _has_cleanlab()
    jobs = []
    losses = args.losses.split(",")
    for seed in seeds:
        for name in wanted:
            manifest = read_manifest(uris[seed][name])
            print(
                f"seed {seed} {name}: {manifest.split_rows('train')} train rows, "
                f"{manifest.noisy_counts.get('train', 0)} flipped",
                flush=True,
            )
            trains = [{"loss": loss} for loss in losses if loss != "trust_penalty"]
            if "trust_penalty" in losses:
                trains += [{"loss": "trust_penalty", "penalty_weight": w} for w in weights]
            jobs += [(name, seed, "run", t) for t in trains if _selected(args.runs, name, t)]
            cleanlab_here = args.cleanlab_settings == "all" or name in args.cleanlab_settings
            if use_cleanlab and cleanlab_here:
                jobs.append((name, seed, "cleanlearning", {}))
    # the long ones first: a cleaning run trains 1 + modes models, CleanLearning folds + 1
    jobs.sort(key=lambda j: -_job_cost(j, args))
    start = time.perf_counter()
    done = _execute(jobs, uris, args, out / "noise_study_runs.jsonl")
    for name in wanted:
        setting = {"seeds": {}}
        for seed in seeds:
            runs = [r for (n, sd, _, _), rs in done if n == name and sd == seed for r in rs]
            if not runs:
                continue
            best = {}
            for r in runs:
                key = _method_key(r)
                if r["loss"] == "trust_penalty":  # penalty_weight by clean validation
                    if key not in best or r["val_macro_f1"] > best[key]["val_macro_f1"]:
                        best[key] = r
                else:
                    best[key] = r
            # the cleaning rounds of the chosen trust_penalty run only
            chosen_pw = best.get("trust_penalty", {}).get("penalty_weight")
            for key in [k for k in best if k.startswith("trust_penalty + ")]:
                matching = [
                    r for r in runs if _method_key(r) == key and r["penalty_weight"] == chosen_pw
                ]
                if matching:
                    best[key] = matching[0]
            setting["seeds"][str(seed)] = {"runs": runs, "best": best}
        results["settings"][name] = setting
    results["wall_seconds"] = time.perf_counter() - start
    (out / "noise_study.json").write_text(json.dumps(results, indent=2, default=float))
    table = markdown(results, args)
    (out / "noise_study.md").write_text(table)
    print(table)


def _data_dir(args, seed: int) -> str:
    root = args.data_dir or f"{args.work_dir}/data-{args.recipe}"
    return f"{root}/seed{seed}"


def _job_cost(job, args) -> int:
    _, _, kind, spec = job
    if kind == "cleanlearning":
        return args.cleanlab_folds + 1
    if spec.get("loss") in CLEANED_LOSSES:
        modes = len([m for m in args.clean_modes.split(",") if m])
        return 1 + modes * len(args.clean_losses.split(","))
    return 1


def _has_cleanlab() -> bool:
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        print("cleanlab not installed (pip install -e '.[study]'): no cleanlab rows", flush=True)
        return False
    return True


def _job(job, uris: dict[int, dict[str, str]], args: argparse.Namespace):
    name, seed, kind, spec = job
    torch.set_num_threads(max(1, args.threads))
    cfg = base_config(args, seed)
    uri = uris[seed][name]
    manifest = read_manifest(uri)
    if kind == "cleanlearning":
        label = f"s{seed} {name} {CLEANLEARNING} ({args.cleanlab_folds}-fold)"
        return job, [cleanlearning_run(cfg, args.backbone, uri, manifest, args, label)]
    label = f"s{seed} {name} {spec['loss']}" + (
        f" pw={spec['penalty_weight']:g}" if "penalty_weight" in spec else ""
    )
    return job, run_one(cfg.with_train(**spec), args.backbone, uri, manifest, args, label)


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
        (name, seed, _, _), runs = result
        with jsonl.open("a") as f:
            for r in runs:
                f.write(json.dumps({"setting": name, "seed": seed, **r}, default=float) + "\n")
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
