"""Connecting to Ray: a cluster when one is there (``ray job submit`` sets RAY_ADDRESS), else a
local in-process Ray sized to this machine."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


NOISY_WORKER_LOGGERS = (
    # Without a dashboard (local runs) it cannot query the state API and warns every few
    # seconds for the whole run; it still does its job (removing orphaned placement groups).
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
)


def quiet_worker_logs() -> None:
    """``worker_process_setup_hook`` of local runs: silence known-noisy Ray worker loggers."""
    for name in NOISY_WORKER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray() -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        keep_data_stats_on_this_node()
    else:
        # The dashboard serves Ray's state API, which Train's PlacementGroupCleaner needs to free
        # the placement group of a run whose controller was stopped (every finished Tune
        # trial); without it those CPUs stay reserved and the next trial's data never loads.
        # logo_train is installed, so workers import it (and the hook) without shipping code.
        info = ray.init(
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env={"worker_process_setup_hook": "logo_train.raysetup.quiet_worker_logs"},
        )
        if info.dashboard_url:
            log.info("Ray dashboard: http://%s", info.dashboard_url)
    resources = ray.cluster_resources()
    log.info(
        "Ray %s: %g CPUs, %g GPUs",
        "cluster at " + address if address else "local",
        resources.get("CPU", 0),
        resources.get("GPU", 0),
    )


def keep_data_stats_on_this_node() -> None:
    """Create Ray Data's stats actor from the driver, so it lives on the driver's node.

    The actor is detached and pinned to the node of the first process that uses Ray Data. In
    a train job nothing runs Ray Data on the driver before the workers do (the train stream's
    split coordinator and the workers' validation reads run on worker nodes), so it landed on
    a worker node, which then never became idle: the autoscaler kept it after the job (found
    in the raylet's state dump: the only resource user of the node that stayed
    was ``_StatsActor``). On the head, which stays anyway, it holds nothing up. Ray 2.60 has no
    public call for this; without the private one, a one-row execution on the driver does the
    same."""
    try:
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:  # moved in another Ray version: the public way
        import ray.data

        ray.data.range(1).materialize()
        return
    get_or_create_stats_actor()
