"""A run that survives its driver (logo_train.resume): the same command continues the run in
its folder; a changed config refuses, naming the fields; ``--fresh`` starts over; a shards folder
left half-written by a killed writer is written again. The integration test kills the driver
of a real ``logo-train run`` with SIGKILL in the data, train and clean stages."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logo_train.config import load_config
from logo_train.data.shards import (
    INCOMPLETE,
    Manifest,
    prepare_output,
    read_manifest,
    write_manifest,
    write_shard,
)
from logo_train.resume import ConfigChanged, check_config, config_differences, describe, start_fresh
from logo_train.storage import write_json
from tests.raycluster import processes

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, *sets):
    return load_config(ROOT / "configs/quick.yaml", [f"output_dir={tmp_path}", *sets])


# --- the config check and --fresh (no Ray) ---------------------------------------------------


def test_a_changed_config_is_refused_naming_the_fields_and_fresh_starts_over(tmp_path):
    cfg = _cfg(tmp_path)
    run = Path(cfg.run_dir)
    (run / "train").mkdir(parents=True)
    (run / "data").mkdir()
    (run / "config.yaml").write_text(
        (ROOT / "configs/quick.yaml")
        .read_text()
        .replace("output_dir: runs", f"output_dir: {tmp_path}")
    )
    check_config(cfg, ("data", "train"))  # the same config: continued
    # fields that change no result may differ
    check_config(_cfg(tmp_path, "train.max_failures=5", "data.workers=1"), ("data", "train"))
    changed = _cfg(tmp_path, "train.seed=1", "model.backbones=[resnet10t]")
    assert config_differences(cfg, changed) == [
        "data.synth.image_size: 112 -> 32",  # resolved from the backbones' input sizes
        "model.backbones: ['resnet10t', 'mobilenetv2_050', 'swin_nano', 'efficientformer_nano', "
        "'efficientnetv2_nano', 'efficientnet_lite0'] -> ['resnet10t']",
        "train.seed: 0 -> 1",
    ]
    with pytest.raises(ConfigChanged, match=r"train\.seed: 0 -> 1") as refused:
        check_config(changed, ("data", "train"))
    assert "--fresh" in str(refused.value) and "model.backbones" in str(refused.value)
    # stages with nothing in the folder yet do not count (tune, then train on its best config)
    check_config(changed, ("data", "tune"))
    lines = []
    start_fresh(changed, ("data", "train"), echo=lines.append)
    assert not (run / "train").exists() and (run / "data").is_dir()
    assert lines == [f"[run] --fresh: removed {run / 'train'}"]
    check_config(changed, ("data", "train"))  # nothing left to mix with


def test_the_first_line_says_what_is_resumed_and_from_where(tmp_path):
    cfg = _cfg(tmp_path, "model.backbones=[resnet10t,mobilenetv2_050]", "tune.enabled=false")
    stages = ("data", "train", "audit", "clean", "benchmark", "report")
    assert describe(cfg, stages) == f"[run] {cfg.run_dir}: a new run"
    train = Path(cfg.run_dir) / "train"  # the profile's lanes: a Ray Train run each
    write_json(train / "run-lane1/resnet10t/result.json", {"backbone": "resnet10t", "epochs": 6})
    write_json(train / "run-lane2/mobilenetv2_050/history.json", [{"epoch": 1}, {"epoch": 2}])
    prepare_output(cfg.shards_uri, overwrite=False)  # a data stage that never finished
    epochs = cfg.for_backbone("mobilenetv2_050").train.epochs  # its recipe's
    assert describe(cfg, stages) == (
        f"[resume] {cfg.run_dir} (same config): data: half-written, written again; "
        f"train: resnet10t done, mobilenetv2_050 stopped after epoch 2 of {epochs}; audit: to do; "
        "clean: to do; benchmark: to do; report: written again"
    )


# --- a shards folder a killed writer left -----------------------------------------------------


def _shard(uri: str, name: str) -> None:
    table = pa.table({"x": [1, 2]})
    write_shard(f"{uri}/{name}", table)


def test_a_half_written_shards_folder_is_written_again_and_foreign_files_are_kept(tmp_path):
    out = str(tmp_path / "shards")
    prepare_output(out, overwrite=False)
    assert (tmp_path / "shards" / INCOMPLETE).is_file()
    _shard(out, "train-00000.parquet")
    _shard(out, "train-00001.parquet")
    # the writer was killed here; the next one removes its shards and starts again
    prepare_output(out, overwrite=False)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [INCOMPLETE]
    _shard(out, "train-00000.parquet")
    files = {"train": ["train-00000.parquet"]}
    write_manifest(
        out, Manifest(source="t", classes=["a"], counts={}, files=files, params={}, has_truth=False)
    )
    assert not (tmp_path / "shards" / INCOMPLETE).exists()
    assert read_manifest(out).files["train"] == ["train-00000.parquet"]
    # a half-written folder that also holds a file logo-train did not write: nothing deleted
    other = str(tmp_path / "other")
    prepare_output(other, overwrite=False)
    _shard(other, "train-00000.parquet")
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        prepare_output(other, overwrite=False)
    assert (tmp_path / "other" / "train-00000.parquet").is_file()


# --- SIGKILL of a real driver -----------------------------------------------------------------

POLL_S = 0.1  # the kill windows below are 1-6 s long
EPOCHS = 4  # 3 left too short a window for the kill inside the epochs
RUN_SETS = [
    "name=resume",
    "data.synth.image_size=32",
    "data.synth.images_per_class=12",
    "data.synth.imbalance_ratio=1",
    "data.synth.val_per_class=2",
    "data.synth.test_per_class=1",
    "data.synth.noise_rate=0.25",
    "data.synth.difficulty=0",
    "data.rows_per_shard=8",  # many small shard files: the data stage is killed between two
    "data.workers=1",
    "model.image_size=32",
    "model.backbones=[resnet10t,mobilenetv2_050]",
    "train.lanes=1",  # one after the other: the kill lands in the second's epochs
    "augment.strength=0",
    "train.batch_size=32",
    f"train.epochs={EPOCHS}",
    "train.per_backbone={}",
    "train.torch_threads=1",
    "train.loss=trust_penalty",  # round 1 with the trust head, round 2 without it
    "tune.enabled=false",
    "train.clean.mode=drop",  # relabel: unit tests (a 4-epoch model's guesses would
    "train.clean.fraction=0.05",  # empty classes here, which the round refuses)
    "train.clean.loss=ce_weighted",
    "train.clean.backbones=[resnet10t]",
    "benchmark.latency_runs=2",
    "benchmark.warmup_runs=1",
    "benchmark.throughput_runs=1",
    "benchmark.throughput_batch=4",
    "benchmark.onnx=false",
    "benchmark.num_cpus=1",
]


def _command(*extra) -> list[str]:
    """``logo-train run`` of the tiny run into ``runs/`` (relative, as in configs/quick.yaml:
    Ray Train takes only absolute paths or URIs)."""
    sets = ["output_dir=runs", *RUN_SETS, *extra]
    return [
        sys.executable, "-m", "logo_train.cli", "run", "--config", str(ROOT / "configs/quick.yaml"),
        "--no-progress", *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip


def _descendants(pid: int) -> set[int]:
    procs = processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


def procs_cmd(pid: int) -> str:
    return processes().get(pid, (0, ""))[1]


def _registered(run: Path) -> list[tuple[str, int]]:
    """(backbone, epoch) of each checkpoint Ray Train registered in the run ``run``."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    return [
        (r["metrics"]["backbone"], r["metrics"]["epoch"]) for r in snapshot["checkpoint_results"]
    ]


def _run_until(command, log: Path, condition, what: str, timeout: float = 400):
    """Start ``command`` in ``log``'s folder (output to ``log``), SIGKILL its driver once
    ``condition()`` returns something true, wait for its Ray to go; return what it returned."""
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)
    start, found = time.time(), None
    try:
        children: set[int] = set()
        while found is None and proc.poll() is None and time.time() - start < timeout:
            # the process tree first (a /proc scan), then the condition and the kill at once: a
            # tiny run finishes an epoch in ~2 s. The pause keeps this loop off the CPU the run
            # under test needs (polled without one, it took a whole core of two)
            time.sleep(POLL_S)
            children = _descendants(proc.pid)
            found = condition() or None
        assert found is not None, (
            f"{what} never came (rc {proc.poll()}):\n{log.read_text()[-3000:]}"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        core = {p for p in children if any(n in procs_cmd(p) for n in ("raylet", "gcs_server"))}
        deadline = time.time() + 60
        while time.time() < deadline and core & set(processes()):
            time.sleep(0.5)
        assert not core & set(processes()), "the killed driver's Ray (raylet, GCS) stayed up"
        time.sleep(2)
        # Ray's dashboard and runtime-env agents outlive a SIGKILLed driver (seen with Ray 2.60);
        # they hold no resources, but are not left beside the next run
        left = children & set(processes())
        for pid in left:
            with contextlib.suppress(ProcessLookupError):  # it exited since the listing
                os.kill(pid, signal.SIGKILL)
        print(f"{what}: driver killed; {len(left)} process(es) of its Ray stopped by the test")
        return found
    finally:
        if proc.poll() is None:
            proc.kill()


def _check_mlflow(run: Path, data: dict) -> None:
    """The run's MLflow store, read back with MLflow's client: exactly one run per model
    however often the driver was killed (logged once a backbone has finished), params = the
    resolved config, every epoch's metrics once, the benchmark row, and the report with
    the exported model in the handed-over model's run."""
    from mlflow.tracking import MlflowClient

    from logo_train.results import best_entry, name

    client = MlflowClient(f"sqlite:///{run}/mlflow.db")
    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id])
    by_model = {}
    for r in runs:
        by_model.setdefault(r.data.tags["model"], []).append(r)
    assert sorted(by_model) == ["mobilenetv2_050", "resnet10t", "resnet10t-round2"]
    assert all(len(v) == 1 for v in by_model.values()), {k: len(v) for k, v in by_model.items()}
    for model, (r,) in by_model.items():
        assert r.info.status == "FINISHED", model
        assert r.data.tags["stage"] == ("clean" if "round" in model else "train")
        assert r.data.params["train.epochs"] == str(EPOCHS)
        assert r.data.params["model.backbones"] == '["resnet10t", "mobilenetv2_050"]'
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_macro_f1")]
        assert steps == list(range(1, EPOCHS + 1)), (model, steps)
        entry = next(e for e in data["backbones"] if name(e) == model)
        assert r.data.metrics["benchmark/macro_f1"] == pytest.approx(entry["metrics"]["macro_f1"])
    best = by_model[name(best_entry(data))][0]
    assert best.data.tags["handed_over"] == "true"
    files = {f.path for f in client.list_artifacts(best.info.run_id, "report/model")}
    assert {"report/model/model.onnx", "report/model/model.json"} <= files


def _first_line(log: Path) -> str:
    lines = log.read_text().splitlines()  # a lock taken over is said before it
    return next(ln for ln in lines if ln.startswith("[resume]") or ln.endswith(": a new run"))


def _epochs(path: Path) -> list[int]:
    return [h["epoch"] for h in json.loads(path.read_text())]


@pytest.mark.integration
def test_a_killed_driver_resumes_where_it_stopped(tmp_path):
    """SIGKILL the driver in the data stage (half-written shards), in the train stage (first
    backbone finished, the second inside its epochs) and in the clean stage (the round's
    training); the same command then finishes the run: nothing finished is redone, the
    interrupted training goes on after its last registered epoch, every epoch is in the
    history once and the report lists every model. The finished run is also the clean stage's
    test: the cleaned shards, the round trained again and audited, the report of both."""
    command, run = _command(), tmp_path / "runs/resume"
    logs = [tmp_path / f"run{i}.log" for i in range(1, 5)]
    print(f"\nlogs: {logs[0].parent}")

    def half_written():
        data = run / "data"
        return (data / INCOMPLETE).exists() and len(list(data.glob("train-*.parquet"))) >= 2

    _run_until(command, logs[0], half_written, "a half-written data folder")
    assert _first_line(logs[0]) == "[run] runs/resume: a new run"

    def second_inside_its_epochs():
        done = (run / "train/run/resnet10t/result.json").exists()
        epochs = [e for b, e in _registered(run / "train/run") if b == "mobilenetv2_050"]
        return done and epochs and max(epochs) < EPOCHS and max(epochs)

    killed_after = _run_until(command, logs[1], second_inside_its_epochs, "mobilenetv2_050 epoch")
    assert _first_line(logs[1]).endswith("data: half-written, written again; train: "
        "resnet10t to start, mobilenetv2_050 to start; audit: to do; clean: to do; benchmark: "
        "to do; report: written again")  # fmt: skip
    first = (run / "train/run/resnet10t/result.json").read_bytes()

    def round_inside_its_epochs():
        epochs = [e for _, e in _registered(run / "clean/resnet10t/round2/train/round2")]
        return epochs and max(epochs) < EPOCHS and max(epochs)

    round_killed_after = _run_until(command, logs[2], round_inside_its_epochs, "round 2 epoch")
    text = logs[2].read_text()
    assert "train: resnet10t done, mobilenetv2_050 stopped after epoch" in _first_line(logs[2])
    assert "[train] mobilenetv2_050: resumed from its checkpoint after epoch" in text
    assert f"[train] resnet10t: trained before ({run / 'train/run/resnet10t'}); kept" in text
    assert "reusing shards" in text

    final = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    logs[3].write_text(final.stdout + final.stderr)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    text = final.stdout
    assert "train: done; audit: done; clean: round 2 of resnet10t stopped after epoch" in (
        _first_line(logs[3])
    )
    assert "[train] resnet10t: resumed from its checkpoint after epoch" in text
    for model in ("resnet10t", "mobilenetv2_050"):
        assert f"[train] {model}: trained before" in text
        assert f"[audit] {model}: audited before" in text
    assert "[clean] resnet10t round 2: cleaned shards written before" in text

    # nothing finished was redone; the interrupted training went on after its last checkpoint
    assert (run / "train/run/resnet10t/result.json").read_bytes() == first
    assert _epochs(run / "train/run/resnet10t/history.json") == list(range(1, EPOCHS + 1))
    second = json.loads((run / "train/run/mobilenetv2_050/history.json").read_text())
    assert [h["epoch"] for h in second] == list(range(1, EPOCHS + 1))
    assert second[-1]["restored_epoch"] >= killed_after  # lost: at most the epoch in progress
    round_run = run / "clean/resnet10t/round2/train/round2"
    round2 = json.loads((round_run / "resnet10t/history.json").read_text())
    assert [h["epoch"] for h in round2] == list(range(1, EPOCHS + 1))
    assert round2[-1]["restored_epoch"] >= round_killed_after

    # no file lost or left over: one Ray Train run per stage, shards as the manifest lists them
    assert sorted(p.name for p in (run / "train").iterdir()) == ["run", "summary.json"]
    manifest = read_manifest(str(run / "data"))
    listed = {n for names in manifest.files.values() for n in names}
    assert {p.name for p in (run / "data").iterdir()} == listed | {
        "manifest.json",
        "contact_sheet.png",
    }
    for ray_run in (run / "train/run", round_run):  # Ray's checkpoints: the ones it lists
        on_disk = sorted(p.name for p in ray_run.glob("checkpoint_2*"))
        snapshot = json.loads((ray_run / "checkpoint_manager_snapshot.json").read_text())
        assert on_disk == sorted(r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"])
        assert len(on_disk) <= 2  # train.checkpoints_to_keep
    assert not (run / "run.lock").exists() and not (run / "data" / INCOMPLETE).exists()
    data = json.loads((run / "report/benchmark.json").read_text())
    assert [b["label"] for b in data["backbones"]] == [
        "resnet10t",
        "mobilenetv2_050",
        "resnet10t-round2",
    ]
    _check_the_clean_stage(run)
    _check_mlflow(run, data)
    print("first lines:\n" + "\n".join(_first_line(log) for log in logs))
    print(f"killed after: mobilenetv2_050 epoch {killed_after}, round 2 epoch {round_killed_after}")

    # the same folder with a changed field: refused before any work, naming the field
    changed = subprocess.run(
        _command("train.seed=1"), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert changed.returncode == 2 and "train.seed: 0 -> 1" in changed.stderr, changed.stderr


def _check_the_clean_stage(run: Path) -> None:
    """The clean stage on noisy tiny data: the cleaned shards, the backbone trained again on
    them, the new model's audit; the report lists round 1 and round 2, and its suspected-label
    list says what was done to each label."""
    before = read_manifest(str(run / "data"))
    after = read_manifest(str(run / "clean/resnet10t/round2/data"))
    summary = json.loads((run / "clean/resnet10t/round2/cleaning.json").read_text())
    n = before.split_rows("train")
    assert summary["dropped"] == round(0.05 * n) and summary["relabelled"] == 0
    assert (summary["loss_before"], summary["loss"]) == ("trust_penalty", "ce_weighted")
    assert after.split_rows("train") == n - summary["dropped"]
    assert summary["flipped_after"] == after.noisy_counts["train"]
    assert summary["flipped_acted_on"] + summary["clean_acted_on"] == round(0.05 * n)
    assert summary["flipped_after"] == before.noisy_counts["train"] - summary["flipped_acted_on"]
    listed = pq.read_table(run / "report/suspected_labels.parquet").to_pydict()
    assert listed["action"].count("dropped") == summary["dropped"]
    assert listed["action"].count("kept") == n - summary["dropped"]
    # round 2 trained with ce_weighted: no trust head, so its audit ranks by loss
    round2 = pq.read_table(run / "clean/resnet10t/round2/audit/suspected_labels.parquet")
    assert round2.num_rows == after.split_rows("train")
    assert all(t is None or t != t for t in round2["trust"].to_pylist())
    data = json.loads((run / "report/benchmark.json").read_text())
    assert data["backbones"][2]["cleaning"]["dropped"] == summary["dropped"]
    md = (run / "report/benchmark.md").read_text()
    assert "## Cleaning round" in md and "| resnet10t-round2 | ce_weighted |" in md
    assert "| resnet10t | trust_penalty |" in md
