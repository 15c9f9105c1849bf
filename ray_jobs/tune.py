"""Tune job: the config's search(es) with Ray Tune + Optuna, each trial a Ray Train run.

ray job submit --working-dir . -- python -m ray_jobs.tune --config configs/full.yaml
ray job submit --working-dir . -- python -m ray_jobs.tune --resume <experiment folder>
"""

import argparse
import sys

from logo_train.cli import add_config_args, add_loss_arg, job_entry


def main() -> None:
    from logo_train.cli import _cmd_tune

    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    add_loss_arg(parser)
    parser.add_argument("--resume", metavar="EXPERIMENT", help="restore an interrupted search")
    parser.add_argument("--no-progress", action="store_true", default=True)
    code = _cmd_tune(parser.parse_args())
    if code:
        sys.exit(code)


if __name__ == "__main__":
    job_entry(main)
