"""Experiment tracking in MLflow, through Ray's own integrations (``tracking.*``).

One MLflow experiment per run name (``tracking.experiment``, default the run's ``name``), in
a SQLite store inside the run folder unless ``tracking.uri`` names another (a team's server):

* **a run per backbone trained** (the train stage; a cleaning round's retraining too, named
  ``<backbone>-round2``), logged by the driver once the backbone has finished
  (``log_backbone``: params = the backbone's resolved config in dotted keys, every epoch's
  metrics from ``history.json``, ``result/*``); then the benchmark row's metrics
  (``log_benchmark``) and, in the handed-over model's run, the report and the exported model
  as artifacts (``log_report``). Not from the workers (Ray's ``setup_mlflow``): a worker on
  another node cannot reach the run folder's SQLite file, and a resumed backbone would log
  the epochs it trains again twice;
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
import tempfile
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
    if root.startswith("file://"):
        root = root[len("file://") :]
    elif "://" in root and not t.uri:
        raise ValueError(
            f"config field 'tracking.uri' = '': a run stored at {root} needs a tracking server "
            "(http://...: the default SQLite store lives in a local run folder), or "
            "tracking.mlflow=false"
        )
    return {
        "uri": t.uri or f"sqlite:///{root}/{DB}",
        "experiment": t.experiment or cfg.name,
        "artifacts": "" if t.uri else f"{root}/{ARTIFACTS}",
        "run": root,
    }


def ensure_experiment(where: dict[str, str]) -> str:
    """The experiment's id, created (artifacts in the run folder by default) when new."""
    if "://" not in where["run"]:
        os.makedirs(where["run"], exist_ok=True)  # SQLite needs the folder of its file
    client = _client(where)
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


def log_backbone(
    where: dict[str, str], cfg: Config, model: str, tags: dict[str, str], output_uri: str
) -> str:
    """A trained backbone's MLflow run, from what its training wrote (``output_uri``:
    ``history.json``, ``result.json``): params = its resolved config, every epoch's metrics at
    step = epoch, ``result/*``. Logged by the driver once the backbone has finished, so a
    resumed training logs each epoch once, and no worker on another node needs the store.
    A model that has a run of this run folder already keeps it (a resumed driver)."""
    from mlflow.entities import Metric, Param

    from logo_train.checkpoint import HISTORY_JSON
    from logo_train.storage import join, read_json
    from logo_train.worker import RESULT_JSON

    done = dict(_run_ids(where, model, status="FINISHED"))
    if model in done:
        return done[model]
    client = _client(where)
    run = client.create_run(
        ensure_experiment(where),
        run_name=model,
        tags={RUN_TAG: where["run"], MODEL_TAG: model, **tags},
    )
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in params_of(cfg).items()]
    for i in range(0, len(params), 100):  # MLflow takes 100 params a request
        client.log_batch(run_id, params=params[i : i + 100])
    now = int(time.time() * 1000)
    metrics = [
        Metric(k, float(v), now, int(record["epoch"]))
        for record in read_json(join(output_uri, HISTORY_JSON))
        for k, v in record.items()
        if _number(v) and k != "epoch"
    ]
    summary = read_json(join(output_uri, RESULT_JSON))
    metrics += [Metric(f"result/{k}", float(v), now, 0) for k, v in summary.items() if _number(v)]
    for i in range(0, len(metrics), 1000):  # and 1,000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    client.set_terminated(run_id)
    return run_id


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
    client = _client(where)
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

    from logo_train.results import name

    client, runs, logged = _client(where), _runs(where), 0
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

    from logo_train.storage import download_dir

    client = _client(where)
    with tempfile.TemporaryDirectory() as tmp:
        local = str(download_dir(report_dir, tmp)) if "://" in report_dir else report_dir
        client.log_artifacts(run_id, local, artifact_path="report")
    client.set_tag(run_id, "handed_over", "true")
    return True


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _client(where: dict[str, str]):
    """An MLflow client of the run's store. MLflow resolves its default artifact root against
    the working folder even for a store that has its own: a Ray job's driver whose working
    folder was removed under it (seen in the autoscaler test) works from the run folder."""
    from mlflow.tracking import MlflowClient

    try:
        os.getcwd()
    except FileNotFoundError:
        os.chdir(where["run"] if "://" not in where["run"] else tempfile.gettempdir())
    return MlflowClient(where["uri"])
