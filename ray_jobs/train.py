"""Train job: every backbone of the config with Ray Train (DDP), one summary line each, then
the label audit of each (runs/<name>/audit/<backbone>/suspected_labels.parquet) and, with
``train.clean.mode``, the cleaning round (runs/<name>/clean/<backbone>/round2/).

ray job submit --working-dir . -- python -m ray_jobs.train --config configs/full.yaml

Submitted again, it continues the run from what it finished (``--fresh`` starts over).
"""

import argparse

from logo_train.cli import FRESH_HELP, add_config_args, add_loss_arg, config_from_args, job_entry
from logo_train.pipeline import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    add_loss_arg(parser)
    parser.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    args = parser.parse_args()
    train_run(config_from_args(args), progress=False, fresh=args.fresh)


if __name__ == "__main__":
    job_entry(main)
