"""Connecting to Ray: a cluster when one is there (``ray job submit`` sets RAY_ADDRESS), else a
local in-process Ray sized to this machine."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def init_ray() -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    # logo_train is installed in the environment, so workers import it without a runtime_env
    ray.init(address=address, include_dashboard=False if not address else None)
    resources = ray.cluster_resources()
    log.info(
        "Ray %s: %g CPUs, %g GPUs",
        "cluster at " + address if address else "local",
        resources.get("CPU", 0),
        resources.get("GPU", 0),
    )
