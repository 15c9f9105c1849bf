"""Pipeline job: the whole ``logo-train run`` on the cluster — data, tuning, training of every
backbone, label audit, cleaning round (``train.clean``), benchmark, report. Results go to the
config's ``output_dir`` (a local path or s3:// / gs:// URI); the report to
``<output_dir>/<name>/report/``.

ray job submit --working-dir . -- python -m ray_jobs.pipeline --config configs/full.yaml
ray job submit --working-dir . -- python -m ray_jobs.pipeline --config configs/full.yaml \
    --data s3://bucket/logos/shards  # a shards folder (local or a URI) instead

Submitting the same command again (after ``ray job stop``, a lost driver, a restarted head
node) continues the run from what its stages finished; ``--fresh`` starts it over.

``--data`` also takes an ImageFolder tree, but only as a local folder of the node the job's
driver runs on (the ingest walks the local filesystem): ingest a tree once where it is on disk,
``logo-train data ingest TREE s3://bucket/logos/shards``, then pass that URI.
"""

import argparse
import sys

from logo_train.cli import (
    FRESH_HELP,
    add_config_args,
    add_data_arg,
    add_loss_arg,
    config_from_args,
    job_entry,
)
from logo_train.pipeline import run
from logo_train.stages import STAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    add_loss_arg(parser)
    add_data_arg(parser)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages")
    parser.add_argument("--overwrite-data", action="store_true", help="re-make the shards")
    parser.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    args = parser.parse_args()
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    result = run(
        config_from_args(args),
        overwrite_data=args.overwrite_data,
        progress=False,
        stages=stages,
        fresh=args.fresh,
    )
    print(f"run folder: {result.run_dir}")
    if not result.complete:
        sys.exit(130)


if __name__ == "__main__":
    job_entry(main)
