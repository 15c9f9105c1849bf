"""The storage floor and the run layout: the same calls for a local path and a URI."""

import pytest

from logo_train.config import Config
from logo_train.layout import RunLayout
from logo_train.storage import (
    absolute,
    copy_dir,
    exists,
    is_dir,
    is_file,
    join,
    read_bytes,
    read_json,
    write_json,
)


@pytest.mark.parametrize("uri_of", [str, lambda p: f"file://{p}"], ids=["path", "file-uri"])
def test_json_and_folder_copies_through_a_path_or_a_uri(tmp_path, uri_of):
    root = uri_of(tmp_path / "run")
    target = join(root, "a/b/summary.json")
    assert write_json(target, {"x": [1, 2.5], "y": "é"}) == target
    assert read_json(target) == {"x": [1, 2.5], "y": "é"}
    assert is_file(target) and is_dir(join(root, "a/b")) and not exists(join(root, "nope"))
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "state.pt").write_bytes(b"\x00\x01")
    (local / "model.json").write_text("{}")
    (local / "sub" / "skipped.txt").write_text("a sub-folder is not copied")
    copy_dir(local, join(root, "best"))
    assert read_bytes(join(root, "best/state.pt")) == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "run/best").iterdir()) == ["model.json", "state.pt"]


def test_write_json_takes_a_default_for_numpy_numbers(tmp_path):
    import numpy as np

    write_json(tmp_path / "c.json", {"n": np.float32(0.5)}, default=float)
    assert read_json(tmp_path / "c.json") == {"n": 0.5}
    with pytest.raises(TypeError):
        write_json(tmp_path / "d.json", {"n": np.float32(0.5)})


def test_absolute_keeps_uris_and_anchors_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("s3://bucket/run") == "s3://bucket/run"
    assert absolute("runs/quick") == str(tmp_path / "runs/quick")


def test_the_layout_names_every_folder_of_a_run():
    run = RunLayout("s3://b/runs/quick")
    assert run.config == "s3://b/runs/quick/config.yaml"
    assert run.train_summary == "s3://b/runs/quick/train/summary.json"
    assert run.tensorboard_of("run-1/resnet10t") == "s3://b/runs/quick/tensorboard/run-1/resnet10t"
    assert run.audit("resnet10t") == "s3://b/runs/quick/audit/resnet10t"
    assert run.audit("resnet10t", 2) == "s3://b/runs/quick/clean/resnet10t/round2/audit"
    assert run.round_data("resnet10t", 3) == "s3://b/runs/quick/clean/resnet10t/round3/data"
    assert run.clean_summary == "s3://b/runs/quick/clean/summary.json"
    assert run.benchmark_json == "s3://b/runs/quick/report/benchmark.json"
    assert run.model == "s3://b/runs/quick/report/model"
    cfg = Config(output_dir="s3://b/runs/", name="quick")
    assert cfg.layout == run and cfg.shards_uri == run.data
