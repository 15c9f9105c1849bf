"""Tune job: the config's search(es) with Ray Tune + Optuna, each trial a Ray Train run.

ray job submit --working-dir . -- python -m ray_jobs.tune --config configs/full.yaml
ray job submit --working-dir . -- python -m ray_jobs.tune --resume <experiment folder>
"""

import argparse
import sys

from logo_train.cli import add_config_args, add_loss_arg, job_entry


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    add_loss_arg(parser)
    parser.add_argument("--resume", metavar="EXPERIMENT", help="restore an interrupted search")
    parser.add_argument(
        "--progress", action="store_true", help="Ray Tune's live table (off: job logs are files)"
    )
    args = parser.parse_args(argv)
    args.no_progress = not args.progress
    return args


def main() -> None:
    from logo_train.cli import _cmd_tune

    code = _cmd_tune(parse())
    if code:
        sys.exit(code)


if __name__ == "__main__":
    job_entry(main)
