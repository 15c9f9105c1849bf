"""Serve job: deploy a trained model on the cluster's Ray Serve and return; the application
keeps answering after the job ends (``serve status``, ``serve shutdown`` to stop it).

ray job submit --working-dir . -- python -m ray_jobs.serve --model s3://bucket/logo-train/full \
    --replicas 2 --host 0.0.0.0

Serve's HTTP proxy listens on every node at ``--host:--port``; without authentication of its
own, keep it inside the cluster's network (docs/serve.md). The same application from a shell on
the head: ``serve run logo_train.serve:app model=s3://bucket/logo-train/full replicas=2``.
"""

import argparse

from logo_train.cli import add_serve_args, job_entry, serve_options_from_args
from logo_train.serve import start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_serve_args(parser)
    args = parser.parse_args()
    start(args.model, serve_options_from_args(args))


if __name__ == "__main__":
    job_entry(main)
