"""Data job: render the embedded dataset (or ingest an ImageFolder) into Parquet shards.

ray job submit --working-dir . -- python -m ray_jobs.data --config configs/full.yaml
"""

import argparse

from logo_train.cli import add_config_args, config_from_args, job_entry
from logo_train.data.prepare import prepare_data
from logo_train.data.preview import summary_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="re-make the shards")
    args = parser.parse_args()
    cfg = config_from_args(args)
    uri, manifest, _ = prepare_data(cfg, overwrite=args.overwrite, progress=False)
    print(summary_table(manifest))
    print(f"shards: {uri}")


if __name__ == "__main__":
    job_entry(main)
