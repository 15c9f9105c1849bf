"""Prediction job: label image files, folders or shards with a trained model, as Ray Data
batch inference (an actor pool holding the model; ONNX Runtime on CPU, PyTorch on GPU).

ray job submit --working-dir . -- python -m ray_jobs.predict \
    --model runs/full/report/model --out s3://bucket/preds/ --device cuda s3://bucket/shards

Files and folders are read where the tasks run: on a cluster, give a shards URI (or a
filesystem every node mounts).
"""

import argparse

from logo_train.cli import add_predict_args, job_entry, predict_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_predict_args(parser)
    predict_from_args(parser.parse_args())


if __name__ == "__main__":
    job_entry(main)
