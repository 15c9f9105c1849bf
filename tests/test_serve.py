"""logo-train serve: the checks a request goes through (no Ray), then the server for real — a
subprocess as a user starts it, HTTP requests on loopback: labels equal predict's, each bad
input its 4xx while the server keeps answering, a model replica killed under load replaced
without a request lost."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from logo_train import checkpoint as ckpt
from logo_train.config import ServeOptions, load_config
from logo_train.data.prepare import prepare_data
from logo_train.data.shards import read_split
from logo_train.models import build_model, normalisation
from logo_train.serve import (
    STATUS,
    BadInput,
    builder_args,
    check_image,
    check_top_k,
    media_type,
)
from tests.raycluster import free_port, processes

ROOT = Path(__file__).resolve().parents[1]


def _png(w: int = 40, h: int = 30, seed: int | None = 0) -> bytes:
    """Noise (seed) or one flat colour (None: a large image in few bytes)."""
    pixels = (
        np.full((h, w, 3), 90, np.uint8)
        if seed is None
        else np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    )
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


BAD = {  # input -> (its bytes, the reason the server gives)
    "empty body": (b"", "empty_body"),
    "not an image": (b"%PDF-1.4 hello" * 20, "not_an_image"),
    "truncated PNG": (_png()[:-40], "corrupt"),
    "truncated JPEG": (_jpeg()[:-200], "corrupt"),
    "too many pixels": (_png(2100, 2000, seed=None), "too_many_pixels"),
}


# --- the checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_image_is_refused_naming_the_check(name):
    data, reason = BAD[name]
    with pytest.raises(BadInput) as refused:
        check_image(data, ServeOptions())
    assert refused.value.reason == reason and 400 <= refused.value.status < 500
    assert refused.value.body()["error"] == reason and refused.value.body()["detail"]


def test_limits_and_top_k_are_checked():
    small = ServeOptions(max_bytes=1000)
    with pytest.raises(BadInput, match="too_many_bytes"):
        check_image(_png(200, 200, seed=1), small)
    assert check_image(_png(), ServeOptions()) == _png()  # a whole RGB PNG is kept as sent
    assert check_top_k(None, ServeOptions(default_top_k=3), 28) == 3
    assert check_top_k("28", ServeOptions(), 28) == 28
    for raw in ("0", "29", "two"):
        with pytest.raises(BadInput, match="bad_top_k"):
            check_top_k(raw, ServeOptions(), 28)
    assert media_type("image/PNG; charset=x") == "image/png"
    assert STATUS["unsupported_media_type"] == 415 and STATUS["too_many_bytes"] == 413
    with pytest.raises(ValueError, match="replicas"):
        ServeOptions(replicas=0).check()


def test_the_serve_run_builder_takes_the_flags_options():
    model, options = builder_args(
        {"model": "runs/quick", "replicas": "2", "batch_wait_ms": "1.5", "host": "0.0.0.0"}
    )
    assert model == "runs/quick"
    assert (options.replicas, options.batch_wait_ms, options.host) == (2, 1.5, "0.0.0.0")
    assert options.max_batch_size == ServeOptions().max_batch_size
    with pytest.raises(ValueError, match=r"unknown serve argument\(s\) \['replica'\]"):
        builder_args({"model": "m", "replica": "2"})
    with pytest.raises(ValueError, match="needs model="):
        builder_args({"replicas": "2"})
    with pytest.raises(ValueError, match="max_batch_size"):
        builder_args({"model": "m", "max_batch_size": "0"})


def test_the_serve_config_file_is_serves_own_and_names_our_options():
    """configs/serve.yaml: Ray Serve's schema accepts it, its args are serve options."""
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((ROOT / "configs/serve.yaml").read_text())
    app = ServeDeploySchema.model_validate(data).applications[0]
    assert app.import_path == "logo_train.serve:app" and app.name == "logo-train"
    model, options = builder_args(app.args)
    assert model == "runs/quick"
    assert options.autoscaling and (options.replicas, options.max_replicas) == (1, 4)
    assert "autoscaling" in options.replicas_said() and "1-4 replicas" in options.replicas_said()
    assert not ServeOptions().autoscaling
    with pytest.raises(ValueError, match="'max_replicas' = 2: more than 'replicas' \\(2\\)"):
        builder_args({"model": "m", "replicas": "2", "max_replicas": "2"})


# --- the server for real ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory):
    """A resnet10t checkpoint with a random classifier (predictions vary by image) and the
    test split of tiny embedded data as <class>/<i>.png files."""
    tmp = tmp_path_factory.mktemp("serve")
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [f"output_dir={tmp}", "data.synth.images_per_class=6", "data.synth.imbalance_ratio=2",
         "data.synth.val_per_class=1", "data.synth.test_per_class=2", "data.workers=1"],
    )  # fmt: skip
    uri, manifest, _ = prepare_data(cfg, progress=False)
    torch.manual_seed(0)
    model = build_model("resnet10t", len(manifest.classes), 32)
    nn.init.normal_(model.get_classifier().weight, std=0.5)
    mean, std = normalisation(model)
    info = ckpt.ModelInfo("resnet10t", len(manifest.classes), 32, mean, std, manifest.classes)
    ckpt.save(tmp / "ckpt", info=info, model=model, epoch=1, best_metric=0.0, history=[])
    table = read_split(uri, "test", ["image", "label_name"])
    files = tmp / "files"
    rows = zip(table["image"].to_pylist(), table["label_name"].to_pylist(), strict=True)
    for i, (img, name) in enumerate(rows):
        (files / name).mkdir(parents=True, exist_ok=True)
        (files / name / f"{i:04d}.png").write_bytes(img)
    return tmp / "ckpt", files


def _start(model: Path, port: int, log: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "logo_train.cli", "serve", "--model", str(model),
               "--port", str(port), *flags]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            up = False
        if up and "Ctrl-C stops it" in log.read_text():  # every replica running
            return proc
        time.sleep(1)
    proc.kill()
    raise AssertionError("the server did not come up:\n" + log.read_text()[-3000:])


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Serve shut down, Ray stopped
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def _predict_in_process(checkpoint: Path, paths: list[Path], workdir: Path) -> dict[str, dict]:
    """path -> predict's answer (label, probability, top-3 labels), as its Ray Data stages
    compute it: ``read_files``, ``preprocess``, then the ``Predictor`` actor's call."""
    from dataclasses import asdict

    from logo_train.data.augment import eval_spec
    from logo_train.exported import MODEL_ONNX, resolve_model
    from logo_train.predict import Predictor, preprocess, read_files

    resolved = resolve_model(checkpoint, str(workdir))
    meta = resolved.meta
    batch = {
        "index": np.arange(len(paths)),
        "path": np.asarray([str(p) for p in paths], dtype=object),
        "label": np.asarray([p.parent.name for p in paths], dtype=object),
    }
    batch = preprocess(read_files(batch, max_pixels=40_000_000), eval_spec(meta))
    onnx = Path(resolved.onnx_dir, MODEL_ONNX).read_bytes()
    predictor = Predictor(asdict(meta), onnx, b"", "cpu", 1, 3, meta.min_confidence)
    out = predictor(batch)
    assert list(out["reason"]) == [""] * len(paths), out["detail"]
    return {
        path: {"label": out["label"][i], "probability": out["probability"][i],
               **{f"top{j}_label": out[f"top{j}_label"][i] for j in (1, 2, 3)}}
        for i, path in enumerate(out["path"])
    }  # fmt: skip


def _replicas() -> list[int]:
    return [p for p, (_, cmd) in processes().items() if "ServeReplica:logo-train:LogoModel" in cmd]


@pytest.mark.integration
def test_the_server_answers_as_predict_refuses_bad_input_and_survives_a_replica(
    model_and_files, tmp_path
):
    checkpoint, files = model_and_files
    paths = sorted(files.rglob("*.png"))
    # predict's answers first: its own steps (read, decode + resize, the Predictor), in this
    # process; `logo-train predict` runs the same steps in Ray Data (tests/test_predict.py)
    expected = _predict_in_process(checkpoint, paths, tmp_path)

    port = free_port()
    log = tmp_path / "serve.log"
    server = _start(checkpoint, port, log, "--replicas", "2", "--max-batch-size", "8")
    url = f"http://127.0.0.1:{port}"
    try:
        # the model: what it is, and the same answers as predict, file for file
        about = httpx.get(f"{url}/model", timeout=10).json()
        assert about["name"] == "resnet10t" and len(about["classes"]) == 28
        for path in paths:
            r = httpx.post(f"{url}/predict?top_k=3", content=path.read_bytes(),
                           headers={"Content-Type": "image/png"}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            answer, want = r.json(), expected[str(path)]
            assert answer["label"] == want["label"], path
            assert answer["probability"] == pytest.approx(float(want["probability"]), abs=1e-5)
            assert [t["label"] for t in answer["top_k"]] == [
                want[f"top{j}_label"] for j in (1, 2, 3)
            ]
            assert answer["model"]["name"] == "resnet10t" and answer["model"]["version"]
        # multipart too
        with paths[0].open("rb") as f:
            r = httpx.post(f"{url}/predict", files={"file": ("a.png", f, "image/png")}, timeout=30)
        assert r.status_code == 200 and r.json()["label"] == expected[str(paths[0])]["label"]

        # each bad input: its 4xx and reason; the next good request is answered
        bad = {name: (data, "image/png", reason) for name, (data, reason) in BAD.items()}
        bad["wrong content type"] = (paths[0].read_bytes(), "text/plain", "unsupported_media_type")
        bad["too many bytes"] = (b"\x89PNG" + b"0" * (9 * 2**20), "image/png", "too_many_bytes")
        bad["bad top_k"] = (paths[0].read_bytes(), "image/png", "bad_top_k")
        refused = {}
        for name, (data, kind, reason) in bad.items():
            query = "?top_k=99" if name == "bad top_k" else ""
            r = httpx.post(f"{url}/predict{query}", content=data,
                           headers={"Content-Type": kind}, timeout=30)  # fmt: skip
            refused[name] = (r.status_code, r.json()["error"])
            assert r.status_code == STATUS[reason] and r.json()["error"] == reason, (name, r.text)
            good = httpx.post(f"{url}/predict", content=paths[1].read_bytes(),
                              headers={"Content-Type": "image/png"}, timeout=30)  # fmt: skip
            assert good.status_code == 200, (name, good.text)
        print("\nbad inputs:", refused)

        # a model replica killed under load: replaced, every request answered
        before = _replicas()
        assert len(before) == 2, before
        statuses = asyncio.run(_load_with_a_kill(url, paths, before[0]))
        assert statuses == {200: 200}, statuses  # sent = answered, none refused or failed
        deadline = time.time() + 120
        while time.time() < deadline and (len(_replicas()) < 2 or before[0] in _replicas()):
            time.sleep(1)
        assert len(_replicas()) == 2 and before[0] not in _replicas(), "no replacement replica"
        stats = httpx.get(f"{url}/stats", timeout=10).json()
        print("server counts:", stats)
        assert stats["answered"] >= len(paths) + len(bad) + 200
    finally:
        _stop(server)
    assert _replicas() == [] and "Traceback" not in log.read_text(), log.read_text()[-3000:]


async def _load_with_a_kill(url: str, paths: list[Path], victim: int) -> dict[int, int]:
    """200 requests, 16 at a time; the replica ``victim`` is SIGKILLed after the 40th."""
    images = [p.read_bytes() for p in paths]
    statuses: dict[int, int] = {}
    sent = 0
    async with httpx.AsyncClient(timeout=60) as client:
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            nonlocal sent
            async with gate:
                sent += 1
                if sent == 40:
                    os.kill(victim, signal.SIGKILL)
                r = await client.post(f"{url}/predict", content=images[i % len(images)],
                                      headers={"Content-Type": "image/png"})  # fmt: skip
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        await asyncio.gather(*(one(i) for i in range(200)))
    return statuses


@pytest.mark.integration
def test_serve_run_of_a_config_file_scales_up_under_load_and_back_down(model_and_files, tmp_path):
    """``serve run`` of configs/serve.yaml (its model, port and delays changed): one model
    replica at rest, at least two under 16 concurrent requests, one again after the load, and
    every request answered 200."""
    checkpoint, files = model_and_files
    images = [p.read_bytes() for p in sorted(files.rglob("*.png"))]
    data = yaml.safe_load((ROOT / "configs/serve.yaml").read_text())
    port = free_port()
    data["http_options"]["port"] = port
    data["applications"][0]["args"].update(
        model=str(checkpoint), replicas=1, max_replicas=2, target_ongoing_requests=1,
        upscale_delay_s=1, downscale_delay_s=4, cpus_per_replica=0.5,
    )  # fmt: skip
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "serve-run.log"
    serve_cli = Path(sys.executable).parent / "serve"
    proc = subprocess.Popen(
        [str(serve_cli), "run", str(config)], cwd=tmp_path, stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not _healthy(url, proc, log):
            time.sleep(1)
        assert _healthy(url, proc, log), "serve run did not come up:\n" + log.read_text()[-3000:]
        assert len(_replicas()) == 1
        statuses, peak = asyncio.run(_load_until_scaled(url, images, want=2, limit_s=120))
        assert peak >= 2, f"no second replica under load (statuses {statuses})"
        # after the load: back to one replica, answering all the while
        deadline = time.time() + 120
        while time.time() < deadline and len(_replicas()) > 1:
            r = httpx.post(f"{url}/predict", content=images[0],
                           headers={"Content-Type": "image/png"}, timeout=60)  # fmt: skip
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            time.sleep(0.5)
        assert len(_replicas()) == 1, "the extra replica stayed after the load"
        assert set(statuses) == {200}, statuses  # none lost, no 5xx
        print(f"\nautoscaling: peak {peak} replicas, {statuses[200]} requests answered")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert _replicas() == [], log.read_text()[-3000:]


def _healthy(url: str, proc: subprocess.Popen, log: Path) -> bool:
    assert proc.poll() is None, log.read_text()[-3000:]
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200 and bool(_replicas())
    except httpx.HTTPError:
        return False


async def _load_until_scaled(url: str, images: list[bytes], want: int, limit_s: float):
    """16 requests in flight until ``want`` model replicas run (then 5 s more) or
    ``limit_s``; returns the statuses and the most replicas seen."""
    statuses: dict[int, int] = {}
    peak, stop_at = 1, time.time() + limit_s
    async with httpx.AsyncClient(timeout=60) as client:

        async def worker(k: int) -> None:
            i = k
            while time.time() < stop_at:
                r = await client.post(f"{url}/predict", content=images[i % len(images)],
                                      headers={"Content-Type": "image/png"})  # fmt: skip
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                i += 16

        async def watch() -> None:
            nonlocal peak, stop_at
            while time.time() < stop_at:
                peak = max(peak, len(_replicas()))
                if peak >= want:
                    stop_at = min(stop_at, time.time() + 5)
                await asyncio.sleep(0.5)

        await asyncio.gather(watch(), *(worker(k) for k in range(16)))
    return statuses, peak
