"""Online inference: a trained model behind HTTP on Ray Serve (``logo-train serve``).

Two deployments, so that a bad request never reaches the model and a model replica that dies
costs no accepted request:

* ``Api`` (FastAPI ingress): ``POST /predict`` (the image as the raw body or a multipart file,
  ``?top_k=``), ``GET /healthz``, ``GET /model``. It checks each request before any model work —
  content type, bytes, pixels, an image that is whole (``check_image``: the ingest's own check,
  as ``logo-train predict`` runs it) — and answers a bad one with a 4xx naming the check. It
  calls the model through a ``DeploymentHandle`` and, when the replica it was given dies, asks
  another one (``MODEL_RETRIES``).
* ``LogoModel`` (``--replicas`` of them, or ``--replicas`` to ``--max-replicas`` by Serve's
  autoscaling): holds ONNX Runtime (PyTorch on a GPU replica) and answers batches
  (``@serve.batch``: up to ``--max-batch-size`` requests that arrived within
  ``--batch-wait-ms``) with predict's own functions — ``predict.preprocess`` (decode, make
  square as in training, resize) and ``predict.Predictor`` (normalise, the model, temperature,
  the open-set threshold) — so the answer for a file is ``logo-train predict``'s for it.

The server binds 127.0.0.1 unless told otherwise: it has no authentication of its own
(docs/serve.md).
"""

import asyncio
import hashlib
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve import metrics

from logo_train.config import ServeOptions
from logo_train.data.augment import eval_spec
from logo_train.data.ingest import Reject, stored_bytes
from logo_train.exported import MODEL_ONNX, ExportedModel, resolve_model
from logo_train.predict import Predictor, checkpoint_weights, preprocess
from logo_train.raysetup import init_ray

log = logging.getLogger(__name__)

APP_NAME = "logo-train"
LOGGING = {"enable_access_log": False, "log_level": "WARNING"}
"""Serve's logs: warnings and errors, no line per request (on 2 cores, one access-log line per
request through Ray's log monitor cost more than the model; the counts are at ``GET /stats``)."""
MODEL_RETRIES = 2
"""How many more replicas a request is sent to when the one that had it died."""
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif")
RAW_TYPES = (*IMAGE_TYPES, "application/octet-stream")
STATUS = {  # a check's reason -> its HTTP status
    "empty_body": 400,
    "not_an_image": 400,
    "corrupt": 400,
    "bad_multipart": 400,
    "bad_top_k": 422,
    "unsupported_media_type": 415,
    "too_many_bytes": 413,
    "too_many_pixels": 413,
}


class BadInput(ValueError):
    """A request the server refuses: ``reason`` names the check, ``status`` its HTTP code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.status = reason, detail, STATUS[reason]

    def body(self) -> dict[str, str]:
        return {"error": self.reason, "detail": self.detail}


# --- the checks (pure: no Ray, no HTTP) --------------------------------------------------------


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_image(data: bytes, options: ServeOptions) -> bytes:
    """An upload's bytes as ``predict`` would store them (``ingest.stored_bytes``: the original
    when it is a whole 8-bit RGB JPEG/PNG, else a PNG of its RGB conversion), or ``BadInput``."""
    if not data:
        raise BadInput("empty_body", "the request has no image (an empty body)")
    if len(data) > options.max_bytes:
        raise BadInput("too_many_bytes", f"{len(data)} bytes is over the limit {options.max_bytes}")
    try:
        return stored_bytes(data, options.max_pixels, full_decode=False)
    except Reject as r:
        reason = {"too_large": "too_many_pixels", "empty_file": "empty_body"}.get(
            r.reason, r.reason
        )
        if reason not in STATUS:
            reason = "corrupt"
        raise BadInput(reason, r.detail) from None


def check_top_k(raw: str | None, options: ServeOptions, classes: int) -> int:
    if raw is None or raw == "":
        return min(options.default_top_k, classes)
    try:
        top_k = int(raw)
    except ValueError:
        raise BadInput("bad_top_k", f"top_k={raw!r} is not a whole number") from None
    if not 1 <= top_k <= classes:
        raise BadInput(
            "bad_top_k", f"top_k={top_k}: the model has {classes} classes (1..{classes})"
        )
    return top_k


def model_version(meta: ExportedModel, onnx: bytes) -> str:
    """The model's version: when it was exported and the first 12 hex digits of its ONNX."""
    return f"{meta.created or 'unknown'}+{hashlib.sha256(onnx).hexdigest()[:12]}"


def request_batch(images: list[bytes]) -> dict[str, np.ndarray]:
    """Checked images as the batch predict's ``preprocess`` takes (the columns of a read)."""
    n = len(images)
    blank = np.asarray([""] * n, dtype=object)
    return {
        "index": np.arange(n),
        "path": np.asarray([f"request-{i}" for i in range(n)], dtype=object),
        "label": blank,
        "image": np.asarray(images, dtype=object),
        "reason": blank.copy(),
        "detail": blank.copy(),
    }


def answers(
    meta: ExportedModel,
    onnx: bytes,
    min_confidence: float,
    threads: int,
    torch_state: bytes = b"",
):
    """A function: list of checked image bytes -> one answer each (``{"error", "detail"}`` for
    an image OpenCV cannot decode), through predict's ``preprocess`` and ``Predictor``, with
    every class ranked. With ``torch_state`` (a checkpoint's weights) PyTorch on the GPU."""
    device = "cuda" if torch_state else "cpu"
    predictor = Predictor(
        asdict(meta), onnx, torch_state, device, threads, len(meta.class_names), min_confidence
    )
    spec = eval_spec(meta)

    def run(images: list[bytes]) -> list[dict[str, Any]]:
        n = len(images)
        rows = predictor(preprocess(request_batch(images), spec))
        out: list[dict[str, Any]] = []
        for i in range(n):
            if rows["reason"][i]:  # OpenCV could not decode what the header check passed
                out.append({"error": "corrupt", "detail": str(rows["detail"][i])})
                continue
            ranked = [
                {
                    "label": str(rows[f"top{j}_label"][i]),
                    "probability": float(rows[f"top{j}_probability"][i]),
                }
                for j in range(1, len(meta.class_names) + 1)
            ]
            out.append(
                {
                    "label": str(rows["label"][i]),
                    "probability": float(rows["probability"][i]),
                    "unknown_reason": str(rows["unknown_reason"][i]),
                    "ranked": ranked,
                }
            )
        return out

    return run


# --- the deployments ---------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """What the deployments are built from: the exported model (bytes travel to every replica
    through Ray, so a replica on another node needs no access to these files)."""

    meta: ExportedModel
    onnx: bytes
    described_as: str
    min_confidence: float
    torch_state: bytes = b""
    """The checkpoint's weights, for GPU replicas (``gpus_per_replica``); empty on CPU."""
    version: str = field(init=False)

    def __post_init__(self) -> None:
        self.version = model_version(self.meta, self.onnx)


def load_model(model: str | Path, options: ServeOptions) -> LoadedModel:
    """``--model`` as ``predict`` takes it: an exported folder, a run folder, a checkpoint (local
    or a URI); a checkpoint is exported first."""
    with tempfile.TemporaryDirectory(prefix="logo-train-serve-") as workdir:
        resolved = resolve_model(model, workdir)
        onnx = Path(resolved.onnx_dir, MODEL_ONNX).read_bytes()
    meta = resolved.meta
    threshold = meta.min_confidence if options.min_confidence is None else options.min_confidence
    weights = b""
    if options.gpus_per_replica > 0:
        if not resolved.checkpoint:
            raise ValueError(
                f"serve option 'gpus_per_replica' = {options.gpus_per_replica:g}: GPU replicas "
                f"run PyTorch and need the checkpoint behind --model {model} (an exported "
                f"folder alone has none: give the run folder or the checkpoint)"
            )
        weights = checkpoint_weights(resolved.checkpoint)
    return LoadedModel(meta, onnx, resolved.described_as, threshold, weights)


def build_app(model: LoadedModel, options: ServeOptions):
    """The Serve application: ``Api`` (ingress) bound to ``LogoModel`` (``options.replicas``)."""
    options.check()
    scale: dict[str, Any] = {"num_replicas": options.replicas}
    if options.autoscaling:
        scale = {
            "autoscaling_config": {
                "min_replicas": options.replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing_requests,
                "upscale_delay_s": options.upscale_delay_s,
                "downscale_delay_s": options.downscale_delay_s,
            }
        }
    model_deployment = serve.deployment(
        LogoModel,
        name="LogoModel",
        **scale,
        ray_actor_options={
            "num_cpus": options.cpus_per_replica,
            "num_gpus": options.gpus_per_replica,
        },
        max_ongoing_requests=max(32, 4 * options.max_batch_size),
        health_check_period_s=2,
        health_check_timeout_s=10,
    )
    api_deployment = serve.deployment(
        Api, name="Api", num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=256,
    )  # fmt: skip
    return api_deployment.bind(model_deployment.bind(model, options), model, options)


class LogoModel:
    """One model replica: ONNX Runtime, batches of checked images."""

    def __init__(self, model: LoadedModel, options: ServeOptions):
        threads = max(1, int(options.cpus_per_replica))
        self.run = answers(model.meta, model.onnx, model.min_confidence, threads, model.torch_state)
        self.predict_batch.set_max_batch_size(options.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(options.batch_wait_ms / 1000)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict_batch(self, images: list[bytes]) -> list[dict]:
        start = time.perf_counter()
        # the model in a thread: the replica's event loop keeps gathering the next batch
        out = await asyncio.get_running_loop().run_in_executor(None, self.run, images)
        seconds = time.perf_counter() - start
        for answer in out:
            answer["batch"] = {"size": len(images), "seconds": seconds}
        return out

    async def __call__(self, image: bytes) -> dict:
        return await self.predict_batch(image)


async def _multipart_file(request: Request, max_bytes: int) -> bytes:
    """The first file of a multipart/form-data body."""
    try:
        form = await request.form(max_part_size=max_bytes)
    except Exception as e:  # python-multipart's and Starlette's parse errors
        raise BadInput("bad_multipart", f"the multipart body does not parse: {e}") from e
    files = [v for v in form.values() if hasattr(v, "read")]
    if not files:
        raise BadInput("bad_multipart", "the multipart body holds no file field")
    return await files[0].read()


# Serve's ingress takes the class with the module's names as they are when it is decorated:
# what its methods call is defined above it
DIED = (ActorDiedError, ActorUnavailableError, RayActorError)
http_app = FastAPI(title="logo-train", description="Vehicle-logo classification on Ray Serve")


@serve.ingress(http_app)
class Api:
    """The HTTP ingress: the checks, then the model through its handle."""

    def __init__(self, handle, model: LoadedModel, options: ServeOptions):
        self.handle, self.options = handle, options
        self.meta, self.version = model.meta, model.version
        self.min_confidence, self.described_as = model.min_confidence, model.described_as
        self.counts: Counter = Counter()
        # cluster-wide, in Ray's metrics (Prometheus): ray_logo_train_requests_total
        self.metric = metrics.Counter(
            "logo_train_requests",
            description="POST /predict requests by outcome (answered, or the check refused)",
            tag_keys=("outcome",),
        )

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.metric.inc(tags={"outcome": outcome})

    async def _image(self, request: Request) -> bytes:
        kind = media_type(request.headers.get("content-type"))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.options.max_bytes:
            raise BadInput(
                "too_many_bytes",
                f"Content-Length {declared} is over the limit {self.options.max_bytes}",
            )
        if kind == "multipart/form-data":
            return await _multipart_file(request, self.options.max_bytes)
        if kind not in RAW_TYPES:
            raise BadInput(
                "unsupported_media_type",
                f"Content-Type {kind or '(none)'!r}: send the image as the body "
                f"({', '.join(RAW_TYPES)}) or as a multipart/form-data file",
            )
        return await request.body()

    async def _ask_model(self, image: bytes) -> dict:
        """The model's answer; a replica that died with the request: another replica."""
        for attempt in range(MODEL_RETRIES + 1):
            try:
                return await self.handle.remote(image)
            except DIED:
                if attempt == MODEL_RETRIES:
                    raise
                self._count("retried_on_another_replica")
                log.warning("a model replica died with a request; asking another one")
        raise AssertionError("unreachable")

    @http_app.post("/predict")
    async def predict(self, request: Request):
        start = time.perf_counter()
        try:
            classes = len(self.meta.class_names)
            top_k = check_top_k(request.query_params.get("top_k"), self.options, classes)
            image = check_image(await self._image(request), self.options)
            answer = await self._ask_model(image)
            if "error" in answer:
                raise BadInput(answer["error"], answer["detail"])
        except BadInput as bad:
            self._count(f"refused:{bad.reason}")
            return JSONResponse(bad.body(), status_code=bad.status)
        self._count("answered")
        return {
            "label": answer["label"],
            "probability": answer["probability"],
            "unknown_reason": answer["unknown_reason"],
            "top_k": answer["ranked"][:top_k],
            "model": {"name": self.meta.backbone, "version": self.version},
            "batch_size": answer["batch"]["size"],
            "seconds": time.perf_counter() - start,
        }

    @http_app.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "model": self.meta.backbone, "version": self.version}

    @http_app.get("/model")
    async def model(self):
        meta, o = self.meta, self.options
        return {
            "name": meta.backbone,
            "version": self.version,
            "source": self.described_as,
            "classes": meta.class_names,
            "image_size": meta.image_size,
            "resize": meta.resize,
            "temperature": meta.temperature,
            "min_confidence": self.min_confidence,
            "unknown_class": meta.unknown_class,
            "metrics": meta.metrics,
            "limits": {
                "max_bytes": o.max_bytes,
                "max_pixels": o.max_pixels,
                "max_batch_size": o.max_batch_size,
                "batch_wait_ms": o.batch_wait_ms,
            },
        }

    @http_app.get("/stats")
    async def stats(self):
        """This ingress replica's counts: answered, refused by reason, retried."""
        return dict(self.counts)


# --- starting it ------------------------------------------------------------------------------


def start(model: str | Path, options: ServeOptions, echo=print) -> str:
    """Ray (started, or the cluster of ``RAY_ADDRESS``), Serve's HTTP proxy on
    ``options.host:port`` and the application; returns the server's URL once every replica
    is up."""

    options.check()
    loaded = load_model(model, options)
    init_ray()
    serve.start(http_options={"host": options.host, "port": options.port}, logging_config=LOGGING)
    serve.run(build_app(loaded, options), name=APP_NAME, route_prefix="/", logging_config=LOGGING)
    url = f"http://{options.host}:{options.port}"
    meta = loaded.meta
    echo(
        f"[serve] {loaded.described_as}: {meta.backbone}, {len(meta.class_names)} classes, "
        f"{meta.image_size} px, version {loaded.version}"
    )
    echo(
        f"[serve] {options.replicas_said()}, batches of up to {options.max_batch_size} "
        f"within {options.batch_wait_ms:g} ms; open-set threshold {loaded.min_confidence:.3f}"
    )
    echo(
        f"[serve] {url}  (curl --data-binary @crop.jpg -H 'Content-Type: image/jpeg' {url}/predict)"
    )
    if options.host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"[serve] listening on {options.host}: no authentication, put it behind a proxy")
    return url


def serve_forever(model: str | Path, options: ServeOptions, echo=print) -> None:
    """``logo-train serve``: start, then answer until Ctrl-C; Serve is shut down on the way out."""

    def say(line: str) -> None:  # at once, also when stdout is a file (a log, ray job logs)
        echo(line)
        sys.stdout.flush()

    try:
        start(model, options, say)
        say("[serve] Ctrl-C stops it")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        echo("[serve] stopping")
    finally:
        serve.shutdown()


def app(args: dict[str, str]):
    """``serve run logo_train.serve:app model=runs/quick [replicas=2 max_batch_size=16 ...]``:
    Serve's application builder (the proxy's host and port come from ``serve run``'s own
    flags or the cluster's Serve config)."""
    model, options = builder_args(args)
    return build_app(load_model(model, options), options)


def builder_args(args: dict[str, str]) -> tuple[str, ServeOptions]:
    """``key=value`` arguments of ``serve run`` -> the model and its ``ServeOptions``."""
    args = dict(args)
    if "model" not in args:
        raise ValueError("serve run logo_train.serve:app needs model=<run, checkpoint or export>")
    model = args.pop("model")
    kinds = {f.name: f.type for f in ServeOptions.__dataclass_fields__.values()}
    unknown = sorted(set(args) - set(kinds))
    if unknown:
        raise ValueError(f"unknown serve argument(s) {unknown}; known: model, {sorted(kinds)}")
    cast = {"str": str, "int": int}
    options = ServeOptions(**{k: cast.get(str(kinds[k]), float)(v) for k, v in args.items()})
    options.check()
    return model, options
