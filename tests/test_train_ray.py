"""Ray Train end to end on a local Ray: every family trains with 2 DDP workers, checkpoints
are self-describing, and a killed worker resumes from the last checkpoint."""

import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from logo_train.backbones import BACKBONES
from logo_train.checkpoint import load_model, load_state, run_history
from logo_train.config import load_config
from logo_train.data.prepare import prepare_data
from logo_train.local import fit_local
from logo_train.pipeline import run
from logo_train.train import check_resources, train_backbone, train_stage
from tests.raycluster import processes

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
SMALL = [n for n, s in BACKBONES.items() if s.size == "small"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def tiny_config(tmp_path, *overrides):
    """Easy, clean 32 px data (so the loss must fall fast) and short runs."""
    return load_config(
        ROOT / "configs/quick.yaml",
        [
            f"output_dir={tmp_path}",
            "data.synth.image_size=32",
            "data.synth.images_per_class=12",
            "data.synth.imbalance_ratio=2",
            "data.synth.val_per_class=2",
            "data.synth.test_per_class=1",
            "data.synth.noise_rate=0",
            "data.synth.difficulty=0",
            "data.workers=1",
            "model.image_size=32",
            "augment.strength=0",
            "train.batch_size=32",
            "train.lr=0.003",
            "train.num_workers=2",  # DDP (gloo), 2 x 0.5 CPU leaves a core to Ray Data
            "train.cpus_per_worker=0.5",
            "train.torch_threads=1",
            "train.per_backbone={}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    cfg = tiny_config(tmp)
    uri, manifest, _ = prepare_data(cfg, progress=False)
    return tmp, uri, manifest


def test_every_family_trains_with_two_workers(local_ray, tiny_data, capsys):
    """Through the pipeline's data, train, audit, benchmark and report stages, with the trust
    head (trust_penalty); tuning has its own test (test_tune.py). The pretrained backbone trains
    at its own input size (48 px) beside the five families at 32 px: each size in a worker group
    of its own, on the same shards (rendered at 48 px: the largest of the run), and the table
    says which row started from ImageNet. The run's output_dir is a URI (file:// here; s3:// and
    gs:// go through the same pyarrow filesystems): every stage writes there and nothing lands
    in the working directory (a pathlib round trip would turn file:///x into a folder 'file:')."""
    tmp, _, _ = tiny_data
    cwd = Path.cwd()
    before = sorted(p.name for p in cwd.iterdir())
    cfg = tiny_config(
        tmp,
        f"output_dir=file://{tmp}",
        "name=families",
        "data.synth.image_size=0",  # the largest input size of the run: 48 px
        "train.epochs=3",
        "train.loss=trust_penalty",
        "train.trust_warmup_epochs=1",
        "train.lanes=1",  # one DDP group per input size (lanes: the next test)
        f"model.backbones=[{','.join(SMALL)}]",
        "train.per_backbone={efficientnet_lite0: {image_size: 48, frozen_stages: 4}}",
        "benchmark.latency_runs=3",
        "benchmark.warmup_runs=1",
        "benchmark.throughput_runs=1",
        "benchmark.throughput_batch=4",
        "benchmark.num_cpus=1",
    )
    run_result = run(cfg, progress=False, stages=("data", "train", "audit", "benchmark", "report"))
    manifest = run_result.manifest
    assert manifest.params["image_size"] == 48
    results = run_result.training
    assert [r.backbone for r in results] == SMALL
    for r in results:
        assert r.epochs == 3 and not r.resumed
        state = load_state(r.checkpoint)
        assert state["trust_head"], "trust_penalty checkpoints carry the trust head"
        history = state["history"]
        assert [h["trust_active"] for h in history] == [0.0, 1.0, 1.0][: len(history)]
        assert all(0 < h["train_mean_trust"] < 1 for h in history)
        assert [h["epoch"] for h in history] == list(range(1, r.best_epoch + 1))
        # per-worker batch 16 over ~230 rows split in 2: every epoch took optimizer steps
        assert all(h["steps"] >= 5 for h in history)
        model, info = load_model(r.checkpoint)
        assert info.class_names == manifest.classes and model.training is False
        assert info.image_size == (48 if r.backbone == "efficientnet_lite0" else 32)
        assert info.backbone == r.backbone
        assert info.pretrained == ("package" if r.backbone == "efficientnet_lite0" else "none")
    # plumbing, not learning (tests/test_learning.py): 21 steps at one shared lr on 250 images.
    # Every family's weights move (its loss changes from epoch to epoch); which losses fall in
    # so few steps varies from run to run (CI saw three of five rise), but
    # EfficientFormer's fell by 0.8 there
    losses = {r.backbone: [h["train_loss"] for h in _history(r)] for r in results}
    assert all(math.isfinite(v) for ls in losses.values() for v in ls), losses
    assert all(len(set(ls)) == len(ls) for ls in losses.values()), f"a loss did not move: {losses}"
    assert losses["efficientformer_nano"][-1] < losses["efficientformer_nano"][0] - 0.1, losses
    summary = json.loads((tmp / "families/train/summary.json").read_text())
    assert [r["backbone"] for r in summary["results"]] == SMALL and not summary["failures"]
    events = list((tmp / "families/tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) >= len(SMALL)
    out = capsys.readouterr().out
    assert all(f"[train] {b}" in out for b in SMALL)
    assert re.search(  # the estimate: this backbone's epochs left, the group's backbones after it
        rf"\[train\] {SMALL[0]} +epoch 1/3 .* ~\d+ s left for it, then 4 more in this group", out
    ), out
    five = ", ".join(f"{b} (3 epochs, lr 0.003)" for b in SMALL if b != "efficientnet_lite0")
    assert f"[train] worker group 1 of 2 (2 worker(s) x 0.5 CPU, 32 px): {five}" in out
    assert (
        "[train] worker group 2 of 2 (2 worker(s) x 0.5 CPU, 48 px): efficientnet_lite0 (3 epochs, "
        "lr 0.003, from ImageNet (package))" in out
    )
    runs = sorted(p.name[-4:] for p in (tmp / "families/train").iterdir() if p.is_dir())
    assert runs == ["32px", "48px"]
    # the label audit of every backbone: all training rows ranked by trust
    assert sorted(run_result.audits) == sorted(SMALL)
    for backbone, audit in run_result.audits.items():
        table = pq.read_table(tmp / f"families/audit/{backbone}/suspected_labels.parquet")
        assert table.num_rows == audit.rows == manifest.split_rows("train")
        assert audit.ranked_by == "trust"
        assert table["rank"].to_pylist() == list(range(1, table.num_rows + 1))
        assert (tmp / f"families/audit/{backbone}/suspected_labels.png").is_file()
    assert "[stage] audit done in" in out
    # the benchmark of every best checkpoint, and the report folder a user opens
    report = tmp / "families/report"
    data = json.loads((report / "benchmark.json").read_text())
    assert [e["backbone"] for e in data["backbones"]] == SMALL
    for e, r in zip(data["backbones"], results, strict=True):
        assert e["checkpoint"] == r.checkpoint and e["train"]["best_val_macro_f1"] == pytest.approx(
            r.best_val_macro_f1
        )
        assert e["samples"] == manifest.split_rows("test")
        assert e["onnx"]["matches"], (e["backbone"], e["onnx"]["max_abs_diff"])
        assert [h["epoch"] for h in e["history"]] == [1, 2, 3]  # the whole run, not to the best
        assert e["audit"]["rows"] == manifest.split_rows("train")
        assert e["image_size"] == (48 if e["backbone"] == "efficientnet_lite0" else 32)
    table = (report / "benchmark.md").read_text()
    assert "| efficientnet_lite0 | ImageNet | 48 |" in table
    assert "| resnet10t | random init | 32 |" in table
    for name in ("benchmark.md", "benchmark.parquet", "suspected_labels.parquet"):
        assert (report / name).is_file(), name
    assert len(list(report.glob("*.png"))) >= 6  # 5 plots + the suspected-label sheet
    assert f"report folder: file://{report}" in out
    # the best backbone, chosen on validation, exported for `logo-train predict`
    chosen = max(results, key=lambda r: r.best_val_macro_f1)
    model = json.loads((report / "model/model.json").read_text())
    assert model["backbone"] == chosen.backbone and (report / "model/model.onnx").is_file()
    entry = next(e for e in data["backbones"] if e["backbone"] == chosen.backbone)
    assert model["metrics"]["macro_f1"] == entry["metrics"]["macro_f1"]
    assert f"best: {chosen.backbone} (chosen on val macro-F1" in out
    _check_the_uri_run(f"file://{tmp}/families", cwd, before)


def _check_the_uri_run(run_uri: str, cwd: Path, before: list[str]) -> None:
    """What a run with a URI output_dir leaves: every output under the URI, none in the working
    directory, and the report and the CLI read the URI run folder back."""
    from logo_train.cli import load_config_of_run
    from logo_train.report import write_report
    from logo_train.results import load

    run_dir = Path(run_uri.removeprefix("file://"))
    assert sorted(p.name for p in cwd.iterdir()) == before and not (cwd / "file:").exists()
    for name in ("config.yaml", "data/manifest.json", "train/summary.json",
                 "report/benchmark.parquet", "report/model/model.json"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    data = json.loads((run_dir / "report/benchmark.json").read_text())
    assert all(e["checkpoint"].startswith(f"{run_uri}/train/") for e in data["backbones"])
    assert load_config_of_run(run_uri, []).name == "families"
    assert load(run_uri)[0]["run"] == "families"
    (run_dir / "report/benchmark.md").unlink()
    write_report(run_uri)
    assert (run_dir / "report/benchmark.md").is_file()
    assert sorted(p.name for p in cwd.iterdir()) == before


def _history(result):
    return run_history(result.run_path)


def _train_worker_pids() -> list[int]:
    """PIDs of live Ray Train worker processes (Ray names them in their command line)."""
    return sorted(p for p, (_, cmd) in processes().items() if cmd.startswith("ray::RayTrainWorker"))


def _registered_checkpoints(runs: Path) -> list:
    """The checkpoints Ray Train's controller has registered (its snapshot file)."""
    for snapshot in runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return json.loads(snapshot.read_text())["checkpoint_results"]
        except (json.JSONDecodeError, OSError):  # being written
            return []
    return []


def test_killed_worker_resumes_from_last_checkpoint(local_ray, tiny_data):
    tmp, uri, manifest = tiny_data
    # the streamed path (the full profile's); the family test above reads shared passes
    cfg = tiny_config(
        tmp,
        "name=resume",
        "train.epochs=10",
        "model.backbones=[mobilenetv2_050]",
        "train.shared_passes=false",
    )
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=train_backbone(cfg, "mobilenetv2_050", uri, manifest))
    )
    thread.start()
    runs = tmp / "resume/train"
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and thread.is_alive():
        # a checkpoint folder on disk is not yet one Ray restores from (the controller registers
        # reports when it polls the workers, and an epoch here is under a second): wait for
        # Ray's own checkpoint list
        if _registered_checkpoints(runs) and _train_worker_pids():
            killed = _train_worker_pids()[-1]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.2)
    thread.join(timeout=400)
    assert killed is not None, "the run ended before a worker could be killed"
    result = outcome["result"]
    assert result.epochs == 10
    assert result.resumed, "no report came from a resumed worker group"
    epochs = [h["epoch"] for h in _history(result)]
    assert epochs == list(range(1, 11)), "epochs were repeated or skipped after the resume"
    restored = [h["restored_epoch"] for h in _history(result)]
    assert restored[0] == 0 and restored[-1] >= 1


def test_workers_that_starve_ray_data_fail_before_any_work(local_ray, tmp_path):
    with pytest.raises(ValueError, match=r"train\.cpus_per_worker"):
        check_resources(tiny_config(tmp_path, "train.num_workers=2", "train.cpus_per_worker=1"))
    with pytest.raises(ValueError, match=r"train\.num_workers"):
        check_resources(tiny_config(tmp_path, "train.num_workers=3", "train.cpus_per_worker=1"))
    with pytest.raises(ValueError, match=r"train\.gpus_per_worker"):
        check_resources(tiny_config(tmp_path, "train.gpus_per_worker=1"))
    check_resources(tiny_config(tmp_path, "train.gpus_per_worker=1", "train.autoscale=true"))


def test_eval_split_from_the_driver_equals_the_ray_data_one(local_ray, tiny_data, monkeypatch):
    """A small val split is decoded on the driver (fast start); a large one by Ray Data. Both
    must hold the same tensors and labels."""
    import numpy as np

    from logo_train.data import datasets
    from logo_train.data.augment import TransformSpec

    _, uri, manifest = tiny_data
    spec = TransformSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def rows(ds):
        batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
        return (
            np.concatenate([b["image"] for b in batches]),
            np.concatenate([b["label"] for b in batches]),
        )

    small_images, small_labels = rows(datasets.eval_dataset(uri, "val", spec, manifest))
    monkeypatch.setattr(datasets, "SMALL_EVAL_BYTES", 0)
    big_images, big_labels = rows(datasets.eval_dataset(uri, "val", spec, manifest))
    assert len(small_labels) == manifest.split_rows("val") == len(big_labels)
    assert small_images.shape == (len(small_labels), 3, 32, 32)
    assert small_images.dtype == np.uint8 and small_labels.dtype == np.int64
    assert (small_labels == big_labels).all()
    assert np.allclose(small_images, big_images)


def test_training_stream_is_the_same_for_the_same_seed(local_ray, tiny_data):
    """train.seed reaches Ray Data: file order, row order within a shard and the augmentation
    of every pass come from it, whichever process renders a pass."""
    import numpy as np

    from logo_train.data.augment import TransformSpec
    from logo_train.data.datasets import train_val_datasets

    _, uri, manifest = tiny_data
    spec = TransformSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), strength=0.5)

    def stream(seed):
        ds = train_val_datasets(uri, manifest, spec, spec, passes=2, seed=seed)["train"]
        batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
        return (
            np.concatenate([b["image"] for b in batches]),
            np.concatenate([b["label"] for b in batches]),
        )

    images, labels = stream(0)
    again_images, again_labels = stream(0)
    other_images, other_labels = stream(1)
    rows = manifest.split_rows("train")
    assert len(labels) == 2 * rows
    assert (labels == again_labels).all() and np.array_equal(images, again_images)
    # every pass holds every row once, in a new order, augmented afresh
    assert sorted(labels[:rows]) == sorted(labels[rows:])
    assert not (labels[:rows] == labels[rows:]).all()
    assert not np.array_equal(images, other_images)
    assert sorted(other_labels) == sorted(labels)


def test_passes_rendered_ahead_are_read_by_the_search_and_the_first_group(local_ray, tiny_data):
    """The pipeline's tune stage renders the first shared worker group's passes ahead
    (``render_ahead``): a reader with the same transforms and seed and at most that many
    passes gets that rendering, whose first passes are those a shorter rendering has; another
    seed, or more passes, renders anew; the train stage drops the rendering after its groups."""
    from logo_train import train
    from logo_train.data.datasets import pass_items

    tmp, uri, manifest = tiny_data
    uris = [f"shard-{i}" for i in range(3)]
    assert pass_items(uris, 3, seed=5)[:6] == pass_items(uris, 2, seed=5)
    lines = []
    at_64 = "train.per_backbone={resnet10t: {image_size: 64}, swin_nano: {image_size: 64}}"
    search_at_32 = tiny_config(tmp, "model.backbones=[resnet10t,swin_nano]", at_64)
    train.render_ahead(search_at_32, uri, manifest, echo=lines.append)
    assert lines == [] and not train._AHEAD  # the search's trials could not read the group's
    cfg = tiny_config(tmp, "model.backbones=[resnet10t,swin_nano]", "train.epochs=3")
    train.render_ahead(cfg, uri, manifest, echo=lines.append)
    rows = manifest.split_rows("train")
    rendered = f"[tune] 3 augmented passes of the train split rendered once: {3 * rows} images"
    assert lines[-1].startswith(rendered)
    trials = train.shared_datasets(cfg, uri, manifest, 2, echo=lines.append, prefix="tune")
    first = cfg.for_backbone("resnet10t")
    group = train.shared_datasets(first, uri, manifest, 3, echo=lines.append)
    assert trials is group and trials["train"].count() == 3 * rows
    assert lines[-2:] == [
        "[tune] reading the first 2 of the 3 passes rendered ahead",
        "[train] reading the first 3 of the 3 passes rendered ahead",
    ]
    other_seed = train.shared_datasets(cfg.with_train(seed=1), uri, manifest, 2)
    more = train.shared_datasets(cfg, uri, manifest, 4)
    assert other_seed is not trials and other_seed["train"].count() == 2 * rows
    assert more is not trials and more["train"].count() == 4 * rows
    train._AHEAD.clear()  # what train_stage does after its groups


def test_same_config_twice_gives_the_same_epochs_also_in_a_lane(local_ray, tiny_data):
    """One CPU worker, the same config: the same loss and validation metrics in every epoch.
    The second time resnet10t trains in lane 1 of 2 (``train.lanes``) beside swin_nano in lane
    2, each lane its own Ray Train run, started together: the lane's worker gets half the CPUs
    and threads and records what that config records alone. The stage run again keeps both."""
    tmp, uri, manifest = tiny_data
    common = ["train.epochs=2", "train.num_workers=1", "augment.strength=0.5"]
    common.append("train.loss=trust_penalty")  # the trust head's records are compared too
    cfg = tiny_config(
        tmp, "name=same-1", *common, "train.cpus_per_worker=0.5", "train.torch_threads=1",
        "model.backbones=[resnet10t]",
    )  # fmt: skip
    histories = [_history(train_backbone(cfg, "resnet10t", uri, manifest))]
    lanes = tiny_config(
        tmp, "name=same-2", *common, "train.cpus_per_worker=1", "train.torch_threads=2",
        "train.lanes=2", "model.backbones=[resnet10t,swin_nano]",
    )  # fmt: skip
    lines = []
    results = train_stage(lanes, uri, manifest, echo=lines.append)
    assert [r.backbone for r in results] == ["resnet10t", "swin_nano"]
    runs = Path(lanes.layout.train)  # the deal: test_lanes_deal_the_backbones_in_turn...
    assert [r.run_path for r in results] == [
        str(runs / "run-lane1/resnet10t"),
        str(runs / "run-lane2/swin_nano"),
    ]
    started = [i for i, line in enumerate(lines) if "[train] worker group, lane" in line]
    assert [lines[i].split(":")[0] for i in started] == [
        "[train] worker group, lane 1 of 2 (1 worker(s) x 0.5 CPU, 32 px)",
        "[train] worker group, lane 2 of 2 (1 worker(s) x 0.5 CPU, 32 px)",
    ]
    first_epoch = next(i for i, line in enumerate(lines) if "epoch 1/2" in line)
    assert max(started) < first_epoch, lines  # side by side: both started before any epoch
    assert "[train] 2 augmented passes of the train split rendered once" in "\n".join(lines)
    histories.append(_history(results[0]))
    keys = ["train_loss", "val_loss", "val_macro_f1", "train_mean_trust"]
    first, second = ([{k: h[k] for k in keys} for h in hist] for hist in histories)
    assert len(first) == 2
    assert first == second
    again = []
    assert [r.run_path for r in train_stage(lanes, uri, manifest, echo=again.append)] == [
        r.run_path for r in results
    ]
    assert again[:2] == [
        f"[train] resnet10t: trained before ({runs / 'run-lane1/resnet10t'}); kept",
        f"[train] swin_nano: trained before ({runs / 'run-lane2/swin_nano'}); kept",
    ]
    # one epoch loop (engine.fit): in process, the same config records the same metrics
    seen = []  # the per-epoch hook sees the training; the model trains on after it
    local = fit_local(
        cfg, "resnet10t", uri, manifest, device="cpu", loader_workers=0, echo=None,
        on_epoch_end=lambda t, record: seen.append((record["epoch"], t.model.eval().training)),
    )  # fmt: skip
    assert seen == [(1, False), (2, False)] and local.training.model.training
    ray_only = {"backbone", "restored_epoch", "checkpoint_seconds"}
    assert [set(h) for h in local.history] == [set(h) - ray_only for h in histories[0]]


def test_shared_passes_that_would_not_fit_the_object_store_are_refused_before_rendering():
    from logo_train.data.shards import Manifest
    from logo_train.train import check_object_store, shared_passes_bytes

    cfg = load_config(ROOT / "configs/quick.yaml", ["model.image_size=32"])
    manifest = Manifest("x", ["a", "b"], {"train": {"a": 4000, "b": 1555}}, {}, {}, False)
    need = shared_passes_bytes(cfg, manifest, 24)
    assert need == 24 * 5555 * (3 * 32 * 32 + 8)  # the quick profile's 32 px group: 0.41 GB
    check_object_store(cfg, manifest, 24, capacity=need / 0.7 + 1)  # fits
    with pytest.raises(ValueError, match=r"'train\.shared_passes'.*24 augmented passes of 5555"):
        check_object_store(cfg, manifest, 24, capacity=need)
    check_object_store(cfg.with_train(autoscale=True), manifest, 24, capacity=need)


def test_the_train_line_estimates_what_is_left():
    from logo_train.progress import eta

    history = [{"epoch": 1, "epoch_seconds": 10.0}, {"epoch": 2, "epoch_seconds": 20.0}]
    assert eta(history, 2, 5, 2) == "  ~45 s left for it, then 2 more in this group"
    assert eta(history, 1, 5, 0) == "  ~40 s left for it"
    assert eta(history, 5, 5, 1) == "  (then 1 more in this group)" and eta([], 1, 5, 0) == ""


def test_lanes_deal_the_backbones_in_turn_and_share_the_worker():
    from logo_train.train import stage_groups

    cfg = load_config(ROOT / "configs/quick.yaml", ["train.lanes=2"])
    groups = stage_groups(cfg)
    assert [[(name, list(g)) for name, g in lanes] for lanes in groups] == [
        [
            ("run-32px-lane1", ["resnet10t", "swin_nano", "efficientnetv2_nano"]),
            ("run-32px-lane2", ["mobilenetv2_050", "efficientformer_nano"]),
        ],
        [("run-112px", ["efficientnet_lite0"])],
    ]
    for name, group in groups[0]:
        for backbone, c in group.items():  # half the worker each; the recipe kept
            assert (c.train.cpus_per_worker, c.train.torch_threads) == (0.5, 1), name
            assert c.train.lr == cfg.for_backbone(backbone).train.lr
    ((_, lite0),) = groups[1]  # a group of one backbone: the whole worker
    assert lite0["efficientnet_lite0"].train.cpus_per_worker == 1
    assert lite0["efficientnet_lite0"].train.torch_threads == 2
    three = load_config(ROOT / "configs/quick.yaml", ["train.lanes=3", "train.torch_threads=0"])
    first = stage_groups(three)[0]
    assert [list(g) for _, g in first] == [
        ["resnet10t", "efficientformer_nano"],
        ["mobilenetv2_050", "efficientnetv2_nano"],
        ["swin_nano"],
    ]
    assert {c.train.torch_threads for _, g in first for c in g.values()} == {0}  # Ray's default
    on_gpus = load_config(ROOT / "configs/quick.yaml", ["train.gpus_per_worker=1"])
    assert [name for name, _ in stage_groups(on_gpus)[0]] == ["run-32px"]
    with pytest.raises(ValueError, match=r"train\.lanes"):
        load_config(ROOT / "configs/quick.yaml", ["train.lanes=0"])
