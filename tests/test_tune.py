"""Ray Tune + Optuna: the search space from config, a 2-trial search on a tiny dataset through
the CLI, its outputs, and restoring an interrupted search without re-running finished trials."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from logo_train.config import load_config
from logo_train.tune import apply_params, best_config, experiment_name, search_space, summarise

ROOT = Path(__file__).resolve().parents[1]


def test_search_space_and_params_follow_the_config():
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [
            "tune.space.lr={kind: loguniform, low: 0.0001, high: 0.01}",
            "tune.space.trust_warmup_epochs={kind: int, low: 0, high: 1}",
            "tune.space.label_smoothing={kind: choice, values: [0.0, 0.1]}",
        ],
    )
    space = search_space(cfg.tune.space)
    assert set(space) == {
        "gce_q",
        "class_weight_power",
        "lr",
        "trust_warmup_epochs",
        "label_smoothing",
    }
    assert (space["gce_q"].lower, space["gce_q"].upper) == (0.2, 0.5)
    assert space["trust_warmup_epochs"].upper == 2  # randint's upper bound is exclusive
    tuned = apply_params(
        cfg, {"penalty_weight": 0.3, "trust_warmup_epochs": 1.0, "lr": 0.001}, epochs=2
    )
    assert tuned.train.penalty_weight == 0.3 and tuned.train.lr == 0.001
    assert tuned.train.trust_warmup_epochs == 1 and isinstance(tuned.train.trust_warmup_epochs, int)
    quick_epochs = yaml.safe_load((ROOT / "configs/quick.yaml").read_text())["train"]["epochs"]
    assert tuned.train.epochs == 2 and cfg.train.epochs == quick_epochs


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("tune.space={epochs: {kind: uniform, low: 1, high: 3}}", "tune.space.epochs"),
        ("tune.space.penalty_weight={kind: loguniform, low: 0, high: 1}", "penalty_weight.low"),
        ("tune.space.class_weight_power={kind: uniform, low: 1, high: 0}", "power.high"),
        ("tune.space.lr={kind: choice, values: []}", "tune.space.lr.values"),
        ("tune.proxy_backbone=resnet5", "tune.proxy_backbone"),
        ("tune.epochs=1", "tune.epochs"),  # quick warms up 1 epoch before trust
        ("tune.num_samples=0", "tune.num_samples"),
    ],
)
def test_bad_search_config_names_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config(ROOT / "configs/quick.yaml", [override])


def test_experiment_name_ignores_what_trials_do_not_depend_on():
    cfg = load_config(ROOT / "configs/quick.yaml")
    same = load_config(ROOT / "configs/quick.yaml", ["name=other", "benchmark.latency_runs=9"])
    changed = load_config(ROOT / "configs/quick.yaml", ["tune.num_samples=5"])
    assert experiment_name(cfg, "resnet10t", "s") == experiment_name(same, "resnet10t", "s")
    assert experiment_name(cfg, "resnet10t", "s") != experiment_name(changed, "resnet10t", "s")


def test_summary_outputs_from_trial_rows(tmp_path):
    cfg = load_config(ROOT / "configs/quick.yaml", ["tune.scope=per_backbone"])
    rows = [
        {
            "trial_id": "a",
            "gce_q": 0.25,
            "class_weight_power": 0.5,
            "best_val_macro_f1": 0.20,
            "epochs": 3,
            "stopped_early": False,
            "status": "TERMINATED",
            "seconds": 10.0,
            "error": "",
        },
        {
            "trial_id": "b",
            "gce_q": 0.45,
            "class_weight_power": 0.9,
            "best_val_macro_f1": 0.30,
            "epochs": 3,
            "stopped_early": False,
            "status": "TERMINATED",
            "seconds": 10.0,
            "error": "",
        },
        {
            "trial_id": "c",
            "gce_q": 0.3,
            "class_weight_power": 0.1,
            "best_val_macro_f1": 0.05,
            "epochs": 1,
            "stopped_early": True,
            "status": "TERMINATED",
            "seconds": 4.0,
            "error": "",
        },
        {
            "trial_id": "d",
            "gce_q": 0.35,
            "class_weight_power": 0.2,
            "best_val_macro_f1": math.nan,
            "epochs": 0,
            "stopped_early": False,
            "status": "ERROR",
            "seconds": 0.0,
            "error": "RuntimeError: boom",
        },
    ]
    result = summarise(cfg, "swin_nano", str(tmp_path), rows)
    assert result.best_params == {"gce_q": 0.45, "class_weight_power": 0.9}
    assert result.best_val_macro_f1 == 0.30 and result.trial_epochs == 7
    assert "4 trials, 1 stopped early, 7 trial-epochs" in result.line()
    table = pq.read_table(tmp_path / "trials.parquet").to_pylist()
    assert [r["trial_id"] for r in table] == ["a", "b", "c", "d"]
    md = (tmp_path / "trials.md").read_text()
    assert md.index("| b (best)") < md.index("| a ") < md.index("| c ") < md.index("| d ")
    assert "Trial-epochs spent: 7" in md
    assert (tmp_path / "search.png").read_bytes()[:4] == b"\x89PNG"
    best = load_config(tmp_path / "best_config.yaml")
    assert best.train.gce_q == 0.45 and best.train.class_weight_power == 0.9
    assert best.model.backbones == ["swin_nano"]  # per-backbone search: trains its backbone
    assert best.train.epochs == cfg.train.epochs and best.tune.enabled is False
    assert best_config(cfg, "swin_nano", result.best_params) == best


# --- a real search on a local Ray, through the CLI ---------------------------------------------


def _tiny_config(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "configs/quick.yaml").read_text())
    data["output_dir"] = str(tmp_path)
    data["name"] = "tiny"
    data["data"]["workers"] = 1
    data["data"]["synth"].update(
        image_size=32,
        images_per_class=12,
        imbalance_ratio=2.0,
        val_per_class=2,
        test_per_class=0,
        noise_rate=0.2,
    )
    data["model"]["image_size"] = 32
    data["augment"]["strength"] = 0.0
    data["train"].update(epochs=2, batch_size=32, trust_warmup_epochs=1)
    data["tune"].update(num_samples=2, epochs=2, search="random", early_stopping=False, seed=1)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "logo_train.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,
    )


def _trial_epochs(experiment: Path) -> dict[str, list[int]]:
    """Epochs each trial reported to Tune (its result.json), in order."""
    out = {}
    for result in experiment.glob("_trial_*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out[lines[0]["trial_id"] if lines else result.parent.name] = [r["epoch"] for r in lines]
    return out


@pytest.mark.integration
def test_two_trial_search_interrupt_and_resume(tmp_path):
    config = _tiny_config(tmp_path)
    # 1. start the search; Ctrl-C once the first trial has ended
    proc = _cli("tune", "--config", str(config), "--no-progress")
    lines, deadline = [], time.time() + 420
    for line in proc.stdout:
        lines.append(line)
        if "[tune] trial" in line and "ended after" in line:
            proc.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline, "no trial ended in time:\n" + "".join(lines[-30:])
    rest, _ = proc.communicate(timeout=180)
    out = "".join(lines) + rest
    proxy = yaml.safe_load(config.read_text())["tune"]["proxy_backbone"]
    experiment = next((tmp_path / "tiny/tune").glob(f"{proxy}-*"))
    assert proc.returncode != 0, out[-3000:]
    finished = {t: e for t, e in _trial_epochs(experiment).items() if e == [1, 2]}
    assert len(finished) == 1, (_trial_epochs(experiment), out[-3000:])

    # 2. resume from the folder: the finished trial is kept, the other one runs
    proc = _cli("tune", "--resume", str(experiment))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    epochs = _trial_epochs(experiment)
    assert len(epochs) == 2, epochs
    for trial, seen in epochs.items():
        # no epoch reported twice: the finished trial was not re-run, the other ran once
        assert seen == [1, 2], (trial, seen)
    (done,) = finished
    assert f"trial {done} started" not in out, "the finished trial was started again"

    # 3. the outputs; one worker: each trial trained in its own process (no Ray Train run)
    assert len(list(experiment.glob(f"runs/{proxy}-*/{proxy}/best/model.json"))) == 2
    assert not list(experiment.glob("runs/*/checkpoint_manager_snapshot.json"))
    table = pq.read_table(experiment / "trials.parquet").to_pylist()
    assert len(table) == 2 and all(r["epochs"] == 2 for r in table)
    assert {r["status"] for r in table} == {"TERMINATED"}
    assert not any(r["stopped_early"] for r in table)
    best = max(table, key=lambda r: r["best_val_macro_f1"])
    tuned = load_config(experiment / "best_config.yaml")
    assert tuned.train.gce_q == pytest.approx(best["gce_q"])
    assert tuned.train.class_weight_power == pytest.approx(best["class_weight_power"])
    assert 0.2 <= tuned.train.gce_q <= 0.5
    assert "(best)" in (experiment / "trials.md").read_text()
    assert (experiment / "search.png").stat().st_size > 0
    events = list((experiment / "tensorboard").rglob("events.out.tfevents.*"))
    assert len({e.parent.name for e in events}) == 2, "one TensorBoard folder per trial"
    # MLflow (Tune's MLflowLoggerCallback): the trials' runs, their sampled params and epochs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/tiny/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'tune'")
    assert len({r.data.tags["trial_name"] for r in runs}) == 2, [r.data.tags for r in runs]
    assert all({"gce_q", "class_weight_power"} <= set(r.data.params) for r in runs)
    histories = [
        [m.step for m in client.get_metric_history(r.info.run_id, "val_macro_f1")] for r in runs
    ]
    assert [1, 2] in histories, histories

    # 4. the same command again finds the finished search and runs nothing (no Ray either)
    proc = _cli("tune", "--config", str(config), "--no-progress")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert f"[tune] {proxy}: finished before ({experiment}); kept" in out
    assert "[resume]" in out and "tune: done" in out and "started:" not in out
    assert _trial_epochs(experiment) == epochs

    # 5. trials as Ray Train runs (several workers' path, forced): the worker group's reports
    # reach Tune through TuneReportCallback, its checkpoints are Ray Train's
    proc = _cli("tune", "--config", str(config), "--no-progress", "--set", "name=grouped",
                "--set", "tune.trials_in_process=false", "--set", "tune.num_samples=1")  # fmt: skip
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    (grouped,) = (tmp_path / "grouped/tune").glob(f"{proxy}-*")
    assert list(_trial_epochs(grouped).values()) == [[1, 2]]
    assert len(list(grouped.glob("runs/*/checkpoint_manager_snapshot.json"))) == 1


def test_resume_errors_name_the_problem_before_ray_starts(tmp_path, capsys):
    import ray

    from logo_train.cli import main

    assert main(["tune", "--resume", str(tmp_path)]) == 2
    assert "search.json missing" in capsys.readouterr().err
    assert main(["tune", "--resume", str(tmp_path), "--set", "tune.seed=1"]) == 2
    assert "--resume takes the search's own config" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_tuned_configs_share_the_proxy_result_or_keep_each_backbones_own(tmp_path):
    from logo_train.tune import SearchResult, tuned_configs

    def result(backbone, pw):
        cfg = load_config(ROOT / "configs/quick.yaml")
        return SearchResult(backbone, "", [], {"penalty_weight": pw}, 0.1, cfg, True)

    shared = load_config(ROOT / "configs/quick.yaml")
    configs = tuned_configs(shared, {"resnet10t": result("resnet10t", 0.3)})
    assert set(configs) == set(shared.model.backbones)
    assert {c.train.penalty_weight for c in configs.values()} == {0.3}
    # the profile's recipe per backbone, with the tuned parameter on top
    for backbone, c in configs.items():
        recipe = shared.train.per_backbone.get(backbone, {})
        assert c.train.epochs == recipe.get("epochs", shared.train.epochs)
        assert c.train.lr == recipe.get("lr", shared.train.lr)
    assert configs["swin_nano"].train.lr != shared.train.lr

    per = load_config(
        ROOT / "configs/quick.yaml",
        ["tune.scope=per_backbone", "model.backbones=[resnet10t,swin_nano]"],
    )
    configs = tuned_configs(
        per, {"resnet10t": result("resnet10t", 0.2), "swin_nano": result("swin_nano", 2.0)}
    )
    assert configs["resnet10t"].train.penalty_weight == 0.2
    assert configs["swin_nano"].train.penalty_weight == 2.0
