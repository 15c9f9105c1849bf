"""Experiment tracking in MLflow, through Ray's own integrations (``tracking.*``).

One MLflow experiment per run name (``tracking.experiment``, default the run's ``name``), in
a SQLite store inside the run folder unless ``tracking.uri`` names another (a team's server):

* **a run per backbone trained** (the train stage; a cleaning round's retraining too, named
  ``<backbone>-round2``): rank 0 of the Ray Train worker opens it with
  ``ray.air.integrations.mlflow.setup_mlflow`` (params: the backbone's resolved config,
  dotted keys), logs every epoch's metrics (``log_epoch``) and closes it; the driver adds the
  benchmark row's metrics (``log_benchmark``) and, to the handed-over model's run, the report
  and the exported model as artifacts (``log_report``);
* **a run per Tune trial**: Tune's ``MLflowLoggerCallback`` (params: the sampled ones; metrics
  per epoch), tagged ``stage`` = ``tune``.

Runs are found again by their tags (``logo_train.run`` = the run folder, ``model`` = the
table's name). ``mlflow ui --backend-store-uri sqlite:///runs/quick/mlflow.db`` shows them
(the UI comes with ``pip install mlflow``; the package needs only ``mlflow-skinny``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from logo_train.config import Config, config_to_dict
from logo_train.storage import absolute

log = logging.getLogger(__name__)
for _chatty in ("mlflow", "alembic"):  # the store's table set-up, one INFO line per migration
    logging.getLogger(_chatty).setLevel(logging.WARNING)

DB = "mlflow.db"
ARTIFACTS = "mlartifacts"
RUN_TAG, MODEL_TAG, STAGE_TAG = "logo_train.run", "model", "stage"


def settings(cfg: Config) -> dict[str, str] | None:
    """Where the run's tracking goes (``uri``, ``experiment``, ``artifacts``, ``run``: what a
    worker needs, plain strings), or None with ``tracking.mlflow`` off."""
    t = cfg.tracking
    if not t.mlflow:
        return None
    root = absolute(cfg.layout.root)
    return {
        "uri": t.uri or f"sqlite:///{root}/{DB}",
        "experiment": t.experiment or cfg.name,
        "artifacts": "" if t.uri else f"{root}/{ARTIFACTS}",
        "run": root,
    }


def ensure_experiment(where: dict[str, str]) -> str:
    """The experiment's id, created (artifacts in the run folder by default) when new."""
    from mlflow.tracking import MlflowClient

    if "://" not in where["run"]:
        os.makedirs(where["run"], exist_ok=True)  # SQLite needs the folder of its file
    client = MlflowClient(where["uri"])
    found = client.get_experiment_by_name(where["experiment"])
    if found:
        return found.experiment_id
    return client.create_experiment(
        where["experiment"], artifact_location=where["artifacts"] or None
    )


def params_of(cfg: Config) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, JSON values (lists, dicts)."""
    out: dict[str, str] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict) and value and key not in ("per_backbone", "space"):
                walk(value, f"{prefix}{key}.")
            else:
                text = value if isinstance(value, str) else json.dumps(value)
                out[prefix + key] = text[:6000]

    walk(config_to_dict(cfg), "")
    return out


def start_backbone_run(
    where: dict[str, str],
    cfg: Config,
    model: str,
    tags: dict[str, str],
    history: list[dict[str, Any]] | None = None,
):
    """Rank 0 of a Ray Train worker group: an MLflow run for ``model`` (the table's name),
    through ``setup_mlflow``; None on the other ranks. A resumed backbone (``history``: the
    epochs its checkpoint restored) gets a new run that logs those epochs first, and the run
    the killed driver left open is closed as KILLED: the latest run holds exactly the epochs of
    ``history.json``, none twice."""
    import ray.train
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import setup_mlflow

    if ray.train.get_context().get_world_rank() != 0:
        return None
    client = MlflowClient(where["uri"])
    for _, run_id in _run_ids(where, model, status="RUNNING"):
        client.set_tag(run_id, "superseded", "a resumed run took over")
        client.set_terminated(run_id, status="KILLED")
    mlflow = setup_mlflow(
        config=params_of(cfg),
        tracking_uri=where["uri"],
        experiment_name=where["experiment"],
        run_name=model,
        tags={RUN_TAG: where["run"], MODEL_TAG: model, **tags},
    )
    for record in history or []:
        log_epoch(mlflow, record)
    return mlflow


def log_epoch(mlflow, record: dict[str, Any]) -> None:
    """One epoch's numeric metrics, at step = epoch."""
    metrics = {k: float(v) for k, v in record.items() if _number(v) and k != "epoch"}
    mlflow.log_metrics(metrics, step=int(record["epoch"]))


def end_backbone_run(mlflow, summary: dict[str, Any]) -> None:
    """The backbone's ``result.json`` numbers as ``result/*``, and the run closed."""
    mlflow.log_metrics({f"result/{k}": float(v) for k, v in summary.items() if _number(v)})
    mlflow.end_run()


def tune_callbacks(cfg: Config, backbone: str) -> list:
    """Tune's ``MLflowLoggerCallback`` for a search (none with tracking off)."""
    where = settings(cfg)
    if where is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    ensure_experiment(where)
    tags = {RUN_TAG: where["run"], STAGE_TAG: "tune", "backbone": backbone}
    return [
        MLflowLoggerCallback(
            tracking_uri=where["uri"], experiment_name=where["experiment"], tags=tags
        )
    ]


def _run_ids(where: dict[str, str], model: str = "", status: str = "") -> list[tuple[str, str]]:
    """The run folder's backbone runs, oldest first, as (table name, MLflow run id); only
    ``model``'s and only ``status`` ('RUNNING', 'FINISHED') when given."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(where["uri"])
    exp = client.get_experiment_by_name(where["experiment"])
    if exp is None:
        return []
    query = f"tags.`{RUN_TAG}` = '{where['run']}' and tags.`{STAGE_TAG}` != 'tune'"
    if model:
        query += f" and tags.`{MODEL_TAG}` = '{model}'"
    if status:
        query += f" and attributes.status = '{status}'"
    found = client.search_runs(
        [exp.experiment_id], filter_string=query, order_by=["attributes.start_time ASC"]
    )
    return [(r.data.tags[MODEL_TAG], r.info.run_id) for r in found if MODEL_TAG in r.data.tags]


def _runs(where: dict[str, str]) -> dict[str, str]:
    """Table name -> its latest finished backbone run."""
    return dict(_run_ids(where, status="FINISHED"))


def log_benchmark(cfg: Config, data: dict[str, Any]) -> int:
    """``benchmark.json``'s row of every model into its MLflow run (``benchmark/*`` metrics);
    returns how many runs got one."""
    where = settings(cfg)
    if where is None:
        return 0
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from logo_train.results import name

    client, runs, logged = MlflowClient(where["uri"]), _runs(where), 0
    for entry in data["backbones"]:
        run_id = runs.get(name(entry))
        if run_id is None:
            continue
        metrics = {f"benchmark/{k}": v for k, v in entry["metrics"].items() if _number(v)}
        for part in ("eager", "onnx"):
            metrics.update(
                {
                    f"benchmark/{part}_{k}": v
                    for k, v in (entry.get(part) or {}).items()
                    if _number(v)
                }  # fmt: skip
            )
        for key in ("params", "flops", "weights_mb"):
            if _number(entry.get(key)):
                metrics[f"benchmark/{key}"] = entry[key]
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        logged += 1
    return logged


def log_report(cfg: Config, report_dir: str, best: str) -> bool:
    """The report folder (the exported model in it) as artifacts of ``best``'s run, and the
    tag ``handed_over``; False when that model has no run (tracking off, another store)."""
    where = settings(cfg)
    run_id = _runs(where).get(best) if where else None
    if run_id is None:
        return False
    import tempfile

    from mlflow.tracking import MlflowClient

    from logo_train.storage import download_dir

    client = MlflowClient(where["uri"])
    with tempfile.TemporaryDirectory() as tmp:
        local = str(download_dir(report_dir, tmp)) if "://" in report_dir else report_dir
        client.log_artifacts(run_id, local, artifact_path="report")
    client.set_tag(run_id, "handed_over", "true")
    return True


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
