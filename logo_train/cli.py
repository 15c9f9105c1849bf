"""``logo-train``: the command line.

logo-train run [--config F] [--set KEY=VALUE ...]
logo-train train [--config F] [--set KEY=VALUE ...]
logo-train tune [--config F] [--set KEY=VALUE ...] | --resume EXPERIMENT
logo-train audit --checkpoint DIR --shards URI [--out DIR]
logo-train benchmark RUN_DIR | --config F      (every backbone's best checkpoint, then the report)
logo-train report RUN_DIR                      (the report again, from benchmark.json alone)
logo-train predict --model MODEL --out FILE|FOLDER SOURCE...  (labels for files, folders, shards)
logo-train export RUN_OR_CHECKPOINT OUT [--backbone B]  (a self-contained ONNX model folder)
logo-train data synth [--out URI] [--noise-rate R ...]
logo-train data ingest SRC OUT [--layout splits|single ...]
logo-train data show URI

Each command imports its module when it runs (the imports inside the ``_cmd_*`` functions):
``logo-train --help`` and a config error answer without loading Ray, timm or the Tune stack.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Callable

from logo_train.config import PRECISIONS, Config, LossName, ServeOptions, load_config
from logo_train.stages import STAGES, TABLE

LOSSES = typing.get_args(LossName)

# CLI flag -> config key; the flags are shorthands for --set, so validation is the config's.
SYNTH_FLAGS = {
    "image_size": int,
    "images_per_class": int,
    "imbalance_ratio": float,
    "val_per_class": int,
    "test_per_class": int,
    "noise_rate": float,
    "noise_kind": str,
    "difficulty": float,
    "seed": int,
}
INGEST_FLAGS = {
    "layout": str,
    "val_fraction": float,
    "test_fraction": float,
    "max_pixels": int,
    "seed": int,
}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``: shared by the CLI and the ``ray_jobs`` entrypoints."""
    parser.add_argument("--config", help="YAML profile, e.g. configs/quick.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set data.synth.noise_rate=0.4 (repeatable)",
    )


def add_loss_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loss",
        choices=list(LOSSES),
        help="shorthand for --set train.loss=...: " + ", ".join(LOSSES) + " (quick profile: "
        "gce, a bounded loss; full and reference: trust_penalty; docs/labels.md)",
    )


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="SOURCE",
        help="shorthand for --set data.source=...: a local ImageFolder directory or a shards "
        "folder/URI instead of the embedded dataset",
    )


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    flags = [f"train.loss={args.loss}"] if getattr(args, "loss", None) else []
    if getattr(args, "data", None):
        flags.append(f"data.source={args.data}")
    return load_config(args.config, [*(extra or []), *flags, *args.overrides])


def _flag_overrides(args: argparse.Namespace, flags: dict, prefix: str) -> list[str]:
    out = []
    for name in flags:
        value = getattr(args, name, None)
        if value is not None:
            out.append(f"{prefix}.{name}={value}")
    return out


def _common_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows-per-shard", type=int, help="rows per Parquet file")
    p.add_argument("--workers", type=int, help="processes (0: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already there")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


FRESH_HELP = (
    "start over in the run folder: delete the earlier run's tune/train/audit/clean/report "
    "outputs (the shards stay when their parameters match); without it the same command "
    "continues an interrupted run and a changed config is refused"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logo-train", description="Vehicle-logo classifiers on noisy, imbalanced data, on Ray."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pipeline_commands(sub)
    _add_model_commands(sub)
    add_serve_args(sub.add_parser("serve", help="put a trained model behind HTTP (Ray Serve)"))
    _add_data_commands(sub.add_parser("data", help="make or inspect Parquet shards"))
    return parser


def _add_pipeline_commands(sub) -> None:
    """``run``, ``train``, ``tune``: the pipeline, whole or in part."""
    run = sub.add_parser("run", help="the whole pipeline for a config (see README)")
    add_config_args(run)
    add_loss_arg(run)
    add_data_arg(run)
    run.add_argument("--overwrite-data", action="store_true", help="re-make the shards")
    run.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    run.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated stages to run, in pipeline order (default: all): "
        + "; ".join(f"{s.name}: {s.does}" for s in TABLE),
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    train = sub.add_parser("train", help="train every backbone of the config with Ray Train")
    add_config_args(train)
    add_loss_arg(train)
    train.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    tune = sub.add_parser(
        "tune", help="search training parameters with Ray Tune + Optuna (config's tune section)"
    )
    add_config_args(tune)
    add_loss_arg(tune)
    tune.add_argument(
        "--resume",
        metavar="EXPERIMENT",
        help="restore an interrupted search from its folder (finished trials are kept)",
    )
    tune.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_model_commands(sub) -> None:
    """``audit``, ``benchmark``, ``report``, ``predict``, ``export``: what a trained model does."""
    audit = sub.add_parser(
        "audit", help="rank the training labels of shards by how wrong they look to a checkpoint"
    )
    audit.add_argument("--checkpoint", required=True, help="checkpoint folder (or URI)")
    audit.add_argument("--shards", required=True, help="shards folder or URI (its train split)")
    audit.add_argument(
        "--out", help="output folder or URI (default: audit/ beside the checkpoint folder)"
    )
    audit.add_argument("--batch-size", type=int, default=256)
    audit.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    audit.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="forward passes on a CPU (train.audit_precision): auto = bfloat16 where the CPU "
        "has it in hardware",
    )

    bench = sub.add_parser(
        "benchmark",
        help="benchmark the best checkpoint of every trained backbone, then write the report",
    )
    bench.add_argument("run_dir", nargs="?", help="run folder (default: the config's)")
    add_config_args(bench)

    report = sub.add_parser("report", help="re-make the report from a run's benchmark.json")
    report.add_argument("run_dir", help="run folder, its report/ folder, or benchmark.json")

    predict = sub.add_parser(
        "predict",
        help="label image files, folders or shards with a trained model (Ray Data batch inference)",
    )
    add_predict_args(predict)

    export = sub.add_parser(
        "export", help="write a backbone as a self-contained model folder (ONNX + model.json)"
    )
    export.add_argument("model", help="run folder or checkpoint folder")
    export.add_argument("out", help="output folder")
    export.add_argument(
        "--backbone", help="with a run folder: this backbone (default: the best on validation)"
    )


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """``logo-train serve``'s flags (``ray_jobs/serve.py`` takes the same)."""
    d = ServeOptions()
    p.add_argument("--model", required=True, help="run folder, checkpoint or exported folder/URI")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s: this "
                   "machine only; the server has no authentication of its own)")  # fmt: skip
    p.add_argument("--port", type=int, default=d.port, help="default %(default)s")
    p.add_argument("--replicas", type=int, default=d.replicas,
                   help="model replicas (with --max-replicas: the least)")  # fmt: skip
    p.add_argument("--max-replicas", type=int, default=d.max_replicas,
                   help="autoscale from --replicas up to this (0: fixed)")  # fmt: skip
    p.add_argument("--target-ongoing-requests", type=float, default=d.target_ongoing_requests,
                   help="autoscaling: requests in flight per replica")  # fmt: skip
    p.add_argument("--upscale-delay-s", type=float, default=d.upscale_delay_s)
    p.add_argument("--downscale-delay-s", type=float, default=d.downscale_delay_s)
    p.add_argument("--gpus-per-replica", type=float, default=d.gpus_per_replica,
                   help="> 0: PyTorch on a GPU share per replica (needs a checkpoint)")  # fmt: skip
    p.add_argument("--cpus-per-replica", type=float, default=d.cpus_per_replica)
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="requests one model call answers together (1: no batching)")  # fmt: skip
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="how long a replica waits to fill a batch (ms)")  # fmt: skip
    p.add_argument("--max-bytes", type=int, default=d.max_bytes, help="largest body accepted")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest image accepted")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="open-set threshold (default: the model's own; 0 = off)")  # fmt: skip


def serve_options_from_args(args: argparse.Namespace) -> ServeOptions:
    options = ServeOptions(
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        min_confidence=args.min_confidence,
    )
    options.check()
    return options


def _cmd_serve(args: argparse.Namespace) -> int:
    from logo_train.serve import serve_forever

    serve_forever(args.model, serve_options_from_args(args))
    return 0


def _add_data_commands(data: argparse.ArgumentParser) -> None:
    """``data synth``, ``data ingest``, ``data show``."""
    dsub = data.add_subparsers(dest="data_command", required=True)

    synth = dsub.add_parser("synth", help="render the embedded vehicle-logo dataset to shards")
    add_config_args(synth)
    synth.add_argument("--out", help="shards folder or URI (default: <run dir>/data)")
    for name, tp in SYNTH_FLAGS.items():
        synth.add_argument("--" + name.replace("_", "-"), type=tp, dest=name)
    synth.add_argument("--noisy-val", action="store_const", const=True, dest="noisy_val")
    _common_data_args(synth)

    ingest = dsub.add_parser("ingest", help="check an ImageFolder tree and write it to shards")
    ingest.add_argument("src", help="ImageFolder root: <class>/*.jpg or train|val|test/<class>/*")
    ingest.add_argument("out", help="shards folder or URI (local, s3://, gs://)")
    add_config_args(ingest)
    for name, tp in INGEST_FLAGS.items():
        ingest.add_argument("--" + name.replace("_", "-"), type=tp, dest=name)
    _common_data_args(ingest)

    show = dsub.add_parser("show", help="print the summary of a shards folder")
    show.add_argument("uri")


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="run folder (its best backbone), checkpoint folder, or exported model folder",
    )
    p.add_argument(
        "--out",
        required=True,
        help="a file (.csv or .parquet: gathered on the driver, in input order) or a folder / "
        "URI (file://, s3://, gs://) that Ray Data writes: predictions/, rejected/, summary.json",
    )
    p.add_argument(
        "--format",
        dest="out_format",
        choices=("parquet", "csv"),
        default="parquet",
        help="the part files of a folder --out (default parquet)",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="image files, folders (recursive; <class>/ folders give labels to score against), "
        "or shards folders / URIs",
    )
    p.add_argument("--top-k", type=int, default=3, help="classes per row (default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--actors",
        type=int,
        default=0,
        help="model replicas (Ray actors); 0 (default) sizes the pool to the cluster: one per "
        "GPU with --device cuda, else as many as leave one CPU to reading and decoding",
    )
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--split", default="test", help="the split of shards sources (default test)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="larger images: rejected")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="answer 'unknown' below this calibrated top probability (default: the model's "
        "own threshold, fitted by its benchmark: docs/predict.md; 0 turns it off)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def predict_from_args(args: argparse.Namespace) -> int:
    from logo_train.predict import predict

    for flag in ("top_k", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    predict(
        args.model,
        args.sources,
        args.out,
        top_k=args.top_k,
        batch_size=args.batch_size,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        device=args.device,
        split=args.split,
        max_pixels=args.max_pixels,
        min_confidence=args.min_confidence,
        out_format=args.out_format,
        progress=not args.no_progress,
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from logo_train.exported import export_from

    out = export_from(args.model, args.out, backbone=args.backbone)
    print(f"exported model: {out}  (logo-train predict --model {out} ...)")
    return 0


def _data_overrides(args: argparse.Namespace, flags: dict, prefix: str) -> list[str]:
    extra = _flag_overrides(args, flags, prefix)
    if getattr(args, "noisy_val", None):
        extra.append("data.synth.noisy_val=true")
    if args.rows_per_shard is not None:
        extra.append(f"data.rows_per_shard={args.rows_per_shard}")
    if args.workers is not None:
        extra.append(f"data.workers={args.workers}")
    return extra


def _cmd_data(args: argparse.Namespace) -> int:
    from logo_train.data import ingest, synth
    from logo_train.data.preview import CONTACT_SHEET, contact_sheet, summary_table
    from logo_train.data.shards import read_manifest
    from logo_train.storage import join

    if args.data_command == "show":
        print(summary_table(read_manifest(args.uri), max_rejected=10**9))
        return 0
    progress = not args.no_progress
    if args.data_command == "synth":
        cfg = config_from_args(args, _data_overrides(args, SYNTH_FLAGS, "data.synth"))
        uri = args.out or cfg.shards_uri
        manifest = synth.generate(
            cfg.data.synth,
            uri,
            rows_per_shard=cfg.data.rows_per_shard,
            workers=cfg.data.workers,
            overwrite=args.overwrite,
            progress=progress,
        )
    else:
        cfg = config_from_args(args, _data_overrides(args, INGEST_FLAGS, "data.ingest"))
        uri = args.out
        manifest = ingest.ingest(
            args.src,
            uri,
            cfg.data.ingest,
            rows_per_shard=cfg.data.rows_per_shard,
            workers=cfg.data.workers,
            overwrite=args.overwrite,
            progress=progress,
        )
    contact_sheet(uri, manifest)
    print(summary_table(manifest))
    print(f"shards: {uri}\ncontact sheet: {join(uri, CONTACT_SHEET)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from logo_train.pipeline import run

    cfg = config_from_args(args)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    result = run(
        cfg,
        overwrite_data=args.overwrite_data,
        progress=not args.no_progress,
        stages=stages,
        fresh=args.fresh,
    )
    print(f"run folder: {result.run_dir}")
    return 0 if result.complete else 130


def _cmd_train(args: argparse.Namespace) -> int:
    from logo_train.pipeline import train_run

    cfg = config_from_args(args)
    train_run(cfg, progress=not args.no_progress, fresh=args.fresh)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from logo_train.pipeline import tune_run

    if args.resume:
        if args.config or args.overrides or args.loss:
            raise ValueError("--resume takes the search's own config; drop --config/--set/--loss")
        from logo_train.raysetup import init_ray
        from logo_train.tune import check_resumable, resume

        check_resumable(args.resume)  # before starting Ray
        init_ray()
        result = resume(args.resume)
        print(f"[tune] trials: {result.path}/trials.md")
        print(f"[tune] best config: {result.path}/best_config.yaml")
        return 0 if result.complete else 130
    result = tune_run(config_from_args(args), progress=not args.no_progress)
    return 0 if result.complete else 130


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from logo_train.pipeline import benchmark_stage

    if args.run_dir and args.config:
        raise ValueError(
            "give RUN_DIR or --config, not both: a run folder is benchmarked with its own "
            "config.yaml (change it with --set)"
        )
    cfg = load_config_of_run(args.run_dir, args.overrides) if args.run_dir else None
    folder = benchmark_stage(cfg or config_from_args(args))
    print(f"report folder: {folder}")
    return 0


def load_config_of_run(run_dir: str, overrides: list[str]) -> Config:
    """The config a run folder (a local path or a URI) was made with (its config.yaml), plus
    overrides."""
    from logo_train.layout import RunLayout
    from logo_train.storage import is_file

    path = RunLayout(run_dir).config
    if not is_file(path):
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a logo-train run folder)")
    return load_config(path, overrides)


def _cmd_report(args: argparse.Namespace) -> int:
    from logo_train.report import write_report

    folder = write_report(args.run_dir)
    print(f"report folder: {folder}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from logo_train.audit import audit

    out = args.out or args.checkpoint.rstrip("/").rsplit("/", 1)[0] + "/audit"
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    result = audit(
        args.checkpoint,
        args.shards,
        out,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )
    print(f"ranked labels: {result.parquet}\ncontact sheet: {result.contact_sheet}")
    return 0


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def job_entry(job: Callable[[], object]) -> None:
    """Run a ``ray_jobs`` entrypoint: a bad config or input fails fast with exit code 2 and one
    ``error: ...`` line naming the field (what ``ray job logs`` shows), not a traceback."""
    from logo_train.data.ingest import IngestError

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        job()
    except (*USER_ERRORS, IngestError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
    )
    from logo_train.data.ingest import IngestError

    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "tune":
            return _cmd_tune(args)
        if args.command == "benchmark":
            return _cmd_benchmark(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "audit":
            return _cmd_audit(args)
        if args.command == "predict":
            return predict_from_args(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "serve":
            return _cmd_serve(args)
        return _cmd_data(args)
    except (*USER_ERRORS, IngestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
