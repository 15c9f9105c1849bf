"""Benchmark job: every trained backbone's best checkpoint on the test split (metrics, FLOPs,
latency, throughput; ONNX Runtime on CPU), each in a Ray task with the config's
``benchmark.num_cpus`` / ``num_gpus``, then the report (<run dir>/report/).

ray job submit --working-dir . -- python -m ray_jobs.benchmark --config configs/full.yaml
"""

import argparse

from logo_train.cli import add_config_args, config_from_args, job_entry
from logo_train.pipeline import benchmark_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    args = parser.parse_args()
    print(f"report folder: {benchmark_stage(config_from_args(args))}")


if __name__ == "__main__":
    job_entry(main)
