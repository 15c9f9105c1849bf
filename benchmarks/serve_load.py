"""`logo-train serve` under load: a real HTTP client (httpx, asyncio) on loopback.

    python benchmarks/serve_load.py --model runs/quick [--requests 300] [--seconds 40]

In one run, on the same images (``--images`` badge crops, 30-90 px PNG, rendered with a seed of
their own as predict_throughput.py does):

1. the model alone: ONNX Runtime at batch 1 (p50 over 200 calls, the replica's thread count)
   and the decode + resize of one image (predict's ``preprocess``);
2. ``predict``'s streaming images/s on the same files (Ray Data, 1 actor x 1 CPU);
3. the server at 1 and 2 model replicas, batching on (``--max-batch-size``, ``--batch-wait-ms``)
   and off (batch 1): throughput and p50/p95/p99 latency at concurrency 1, 8 and 32, each level
   bounded by ``--requests`` and ``--seconds``; every request counted by status (sent =
   answered);
4. the same with a share of bad requests mixed in (``--bad-share``: empty, not an image,
   truncated, wrong content type): each must get its 4xx while the good ones keep their latency.

Each level also records the CPU each process used (share of one core, from /proc): where the
time goes when the machine is full.

Writes ``benchmarks/results/serve_load.json`` and ``.md``. Targets (issue 28): p50 at
concurrency 1 <= 2 x (ONNX batch-1 + decode); throughput at concurrency 32 with batching >= 0.6
x predict's streaming images/s; no request lost, no 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from predict_throughput import render_native_crops  # noqa: E402

from logo_train.config import ServeOptions  # noqa: E402
from logo_train.data.augment import eval_spec, normalise  # noqa: E402
from logo_train.exported import onnx_session  # noqa: E402
from logo_train.predict import predict, preprocess  # noqa: E402
from logo_train.serve import (  # noqa: E402
    APP_NAME,
    LOGGING,
    build_app,
    load_model,
    request_batch,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BAD = [
    (b"", "image/png"),
    (b"%PDF-1.4" * 40, "image/png"),
    (None, "image/png"),  # a truncated copy of a good image
    (None, "text/plain"),  # a good image with the wrong content type
]


def cpu_seconds() -> dict[int, tuple[float, str]]:
    """pid -> (user + system CPU seconds, name) of this process and every Ray worker process
    (``ray::ProxyActor``, ``ray::ServeReplica:logo-train:Api``, ...), from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if cmd.startswith("ray::") or int(entry.name) == os.getpid():
            name = "load client + driver" if int(entry.name) == os.getpid() else cmd
            out[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / CLOCK_TICKS, name)
    return out


def cpu_share(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Share of one core each process name used between the two samples (>= 1%)."""
    share: dict[str, float] = {}
    for pid, (cpu, name) in after.items():
        used = (cpu - before.get(pid, (0.0, name))[0]) / seconds
        share[name] = share.get(name, 0.0) + used
    return {n: round(u, 2) for n, u in sorted(share.items(), key=lambda x: -x[1]) if u >= 0.01}


def model_alone(loaded, images: list[bytes], threads: int) -> dict[str, float]:
    """ONNX Runtime batch-1 p50 and one image's decode + resize (predict's path), ms."""
    spec = eval_spec(loaded.meta)
    session = onnx_session(loaded.onnx, threads)
    times_decode, times_model = [], []
    for i in range(200):
        image = images[i % len(images)]
        start = time.perf_counter()
        pixels = preprocess(request_batch([image]), spec)["pixels"]
        times_decode.append(time.perf_counter() - start)
        x = normalise(pixels, spec.mean, spec.std)
        start = time.perf_counter()
        session.run(["logits"], {"image": x})
        times_model.append(time.perf_counter() - start)
    return {
        "onnx_batch1_ms_p50": float(np.percentile(times_model[20:], 50) * 1e3),
        "decode_ms_p50": float(np.percentile(times_decode[20:], 50) * 1e3),
    }


async def load(url: str, images: list[bytes], concurrency: int, requests: int, seconds: float,
               bad_share: float = 0.0) -> dict:  # fmt: skip
    """``requests`` POSTs (fewer when ``seconds`` run out), ``concurrency`` in flight."""
    rng = np.random.default_rng(concurrency)
    good_ms, api_ms, batch_sizes, statuses, bad_statuses = [], [], [], {}, {}
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                i = sent
                sent += 1
                image = images[i % len(images)]
                bad = rng.random() < bad_share
                body, kind = image, "image/png"
                if bad:
                    body, kind = BAD[i % len(BAD)]
                    body = (
                        image[: len(image) // 2] if body is None and kind == "image/png" else body
                    )
                    body = image if body is None else body
                start = time.perf_counter()
                r = await client.post(f"{url}/predict", content=body,
                                      headers={"Content-Type": kind})  # fmt: skip
                ms = (time.perf_counter() - start) * 1e3
                target = bad_statuses if bad else statuses
                target[r.status_code] = target.get(r.status_code, 0) + 1
                if not bad and r.status_code == 200:
                    good_ms.append(ms)
                    api_ms.append(r.json()["seconds"] * 1e3)
                    batch_sizes.append(r.json()["batch_size"])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(good_ms) if good_ms else np.zeros(1)
    answered = sum(statuses.values()) + sum(bad_statuses.values())
    return {
        "concurrency": concurrency,
        "sent": sent,
        "answered": answered,
        "good": dict(sorted(statuses.items())),
        "bad": dict(sorted(bad_statuses.items())),
        "images_per_s": len(good_ms) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "api_ms_p50": float(np.percentile(api_ms or [0], 50)),
        "mean_batch": float(np.mean(batch_sizes or [0])),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=str(ROOT / "runs/quick"))
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--bad-share", type=float, default=0.1)
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_load"))
    args = p.parse_args()
    from ray import serve

    from logo_train.raysetup import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        crops = Path(tmp) / "crops"
        render_native_crops(crops, args.images)
        images = [f.read_bytes() for f in sorted(crops.rglob("*.png"))]
        loaded = load_model(args.model, ServeOptions())
        alone = model_alone(loaded, images, threads=1)
        print(f"model alone: {alone}")
        summary = predict(args.model, [str(crops)], Path(tmp) / "p.csv", progress=False)
        alone["predict_images_per_s"] = summary.images_per_s
        print(f"predict streaming: {summary.images_per_s:.0f} images/s")
    init_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config=LOGGING)
    url = f"http://127.0.0.1:{args.port}"
    rows = []
    for replicas in (1, 2):
        for batching in (True, False):
            options = ServeOptions(
                port=args.port,
                replicas=replicas,
                max_batch_size=args.max_batch_size if batching else 1,
                batch_wait_ms=args.batch_wait_ms if batching else 0.0,
            )
            app = build_app(loaded, options)
            serve.run(app, name=APP_NAME, route_prefix="/", logging_config=LOGGING)
            for concurrency in (1, 8, 32):
                before = cpu_seconds()
                start = time.perf_counter()
                row = asyncio.run(load(url, images, concurrency, args.requests, args.seconds))
                row["cpu_share"] = cpu_share(before, cpu_seconds(), time.perf_counter() - start)
                row.update(replicas=replicas, batching=batching)
                rows.append(row)
                print(json.dumps(row))
            if replicas == 2 and batching:
                row = asyncio.run(
                    load(url, images, 32, args.requests, args.seconds, bad_share=args.bad_share)
                )
                row.update(replicas=replicas, batching=batching, bad_share=args.bad_share)
                rows.append(row)
                print(json.dumps(row))
    serve.shutdown()
    result = {
        "machine": platform.processor() or platform.machine(),
        "model": loaded.described_as,
        "backbone": loaded.meta.backbone,
        "image_size": loaded.meta.image_size,
        "alone": alone,
        "rows": rows,
    }
    write(result, Path(args.out))


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    a = result["alone"]
    lines = [
        f"# serve load: {result['backbone']} ({result['image_size']} px), {result['machine']}",
        "",
        f"Model alone: ONNX Runtime batch 1 p50 {a['onnx_batch1_ms_p50']:.2f} ms + decode "
        f"{a['decode_ms_p50']:.2f} ms; predict streaming {a['predict_images_per_s']:.0f} images/s.",
        "",
        "| replicas | batching | concurrency | bad share | sent | answered | good statuses | "
        "bad statuses | images/s | p50 ms | p95 ms | p99 ms | in Api p50 ms | mean batch |",
        "|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['replicas']} | {'on' if r['batching'] else 'off'} | {r['concurrency']} | "
            f"{r.get('bad_share', 0):g} | {r['sent']} | {r['answered']} | {r['good']} | "
            f"{r['bad'] or '-'} | {r['images_per_s']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['api_ms_p50']:.1f} | "
            f"{r['mean_batch']:.1f} |"
        )
    lines += ["", "CPU per process (share of one core) at concurrency 32:", ""]
    for r in result["rows"]:
        if r["concurrency"] == 32 and "cpu_share" in r:
            on = "on" if r["batching"] else "off"
            lines.append(f"- {r['replicas']} replica(s), batching {on}: {r['cpu_share']}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
