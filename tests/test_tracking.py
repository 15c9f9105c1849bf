"""MLflow tracking's driver side (``logo_train.tracking``), on a SQLite store in a temporary
run folder, read back with MLflow's client; the worker side runs in tests/test_resume.py
(a whole run) and tests/test_tune.py (the trials)."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from logo_train import tracking
from logo_train.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_settings_params_and_the_benchmark_row_and_report_land_in_the_models_run(tmp_path):
    cfg = load_config(ROOT / "configs/quick.yaml", [f"output_dir={tmp_path}", "name=t"])
    where = tracking.settings(cfg)
    assert where["uri"] == f"sqlite:///{tmp_path}/t/mlflow.db" and where["experiment"] == "t"
    assert where["artifacts"] == f"{tmp_path}/t/mlartifacts"
    assert tracking.settings(load_config(None, ["tracking.mlflow=false"])) is None
    server = load_config(None, ["tracking.uri=http://mlflow:5000", "tracking.experiment=e"])
    assert tracking.settings(server)["uri"] == "http://mlflow:5000"
    assert tracking.settings(server)["artifacts"] == ""  # the server's own

    params = tracking.params_of(cfg)
    assert params["train.lr"] == "0.003" and params["model.image_size"] == "32"
    assert params["tracking.mlflow"] == "true" and params["name"] == "t"
    assert "train.per_backbone" in params and "train.clean.mode" in params

    # a backbone's run as the worker leaves it, then the driver's benchmark row and report
    exp = tracking.ensure_experiment(where)
    assert tracking.ensure_experiment(where) == exp  # found, not created twice
    client = MlflowClient(where["uri"])
    tags = {tracking.RUN_TAG: where["run"], tracking.MODEL_TAG: "resnet10t", "stage": "train"}
    run = client.create_run(exp, tags=tags, run_name="resnet10t")
    client.set_terminated(run.info.run_id)
    entry = {"backbone": "resnet10t", "label": "resnet10t", "params": 4.9e6, "flops": 1e8,
             "weights_mb": 19.0, "metrics": {"macro_f1": 0.81, "accuracy": 0.8},
             "eager": {"latency_ms_p50": 2.5}, "onnx": None}  # fmt: skip
    other = {**entry, "label": "swin_nano", "backbone": "swin_nano"}  # no run: skipped
    assert tracking.log_benchmark(cfg, {"backbones": [entry, other]}) == 1
    got = client.get_run(run.info.run_id).data.metrics
    assert got["benchmark/macro_f1"] == pytest.approx(0.81)
    assert got["benchmark/eager_latency_ms_p50"] == pytest.approx(2.5)
    assert got["benchmark/params"] == pytest.approx(4.9e6)

    report = tmp_path / "report"
    (report / "model").mkdir(parents=True)
    (report / "model" / "model.onnx").write_bytes(b"onnx")
    (report / "benchmark.md").write_text("| table |")
    assert tracking.log_report(cfg, str(report), "resnet10t")
    assert not tracking.log_report(cfg, str(report), "swin_nano")
    files = {f.path for f in client.list_artifacts(run.info.run_id, "report/model")}
    assert files == {"report/model/model.onnx"}
    assert client.get_run(run.info.run_id).data.tags["handed_over"] == "true"
    assert (tmp_path / "t/mlartifacts").is_dir()  # artifacts in the run folder


def test_a_run_stored_at_a_uri_needs_a_tracking_server(tmp_path):
    cloud = load_config(None, ["output_dir=s3://bucket/lt"])  # loads: the layout works alone
    with pytest.raises(ValueError, match="tracking.uri"):
        tracking.settings(cloud)
    server = load_config(None, ["output_dir=s3://bucket/lt", "tracking.uri=http://m:5000"])
    assert tracking.settings(server)["uri"] == "http://m:5000"
    assert (
        tracking.settings(load_config(None, ["output_dir=s3://b", "tracking.mlflow=false"])) is None
    )
    local = tracking.settings(load_config(None, [f"output_dir=file://{tmp_path}", "name=u"]))
    assert local["uri"] == f"sqlite:///{tmp_path}/u/mlflow.db"
