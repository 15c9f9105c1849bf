"""``logo-train serve``'s options: not part of a run's ``Config`` (a server is started from a
trained model, not from a profile), checked the same way."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs; ``logo-train serve``'s flags."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    """Model replicas: the fixed count, or the least with ``max_replicas``."""
    max_replicas: int = 0
    """> ``replicas``: Serve's autoscaling adds model replicas up to this many while the
    requests in flight per replica stay above ``target_ongoing_requests``, and removes them
    when the load falls; 0 = a fixed ``replicas``."""
    target_ongoing_requests: float = 8.0
    """Autoscaling: the requests in flight per replica it aims at (half a full batch: a replica
    keeps batching, and a queue longer than that brings another one)."""
    upscale_delay_s: float = 5.0
    """Autoscaling: how long the load must stay high before a replica is added."""
    downscale_delay_s: float = 60.0
    """Autoscaling: how long the load must stay low before a replica is removed."""
    gpus_per_replica: float = 0.0
    """> 0: each model replica holds this share of a GPU and runs the model in PyTorch there
    (needs a checkpoint behind ``--model``); 0: ONNX Runtime on CPU."""
    max_batch_size: int = 16
    """Requests one model call may answer together (1: no batching)."""
    batch_wait_ms: float = 5.0
    """How long a replica waits for more requests before it runs a batch that is not full."""
    max_bytes: int = 8 * 2**20
    """Larger bodies are refused (413 too_many_bytes) before they are decoded."""
    max_pixels: int = 4_000_000
    """Larger images are refused (413 too_many_pixels) from their header."""
    cpus_per_replica: float = 1.0
    """Each model replica's CPUs (its ONNX Runtime threads)."""
    min_confidence: float | None = None
    """The open-set threshold; None: the model's own (``model.json``)."""
    default_top_k: int = 3

    def check(self) -> None:
        for name in ("replicas", "max_batch_size", "max_bytes", "max_pixels", "default_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve option '{name}' must be at least 1")
        if not 0 < self.port < 65536:
            raise ValueError(f"serve option 'port' must be in 1..65535, got {self.port}")
        if self.batch_wait_ms < 0 or self.cpus_per_replica <= 0:
            raise ValueError("serve options 'batch_wait_ms' >= 0 and 'cpus_per_replica' > 0")
        if self.max_replicas and self.max_replicas <= self.replicas:
            raise ValueError(
                f"serve option 'max_replicas' = {self.max_replicas}: more than 'replicas' "
                f"({self.replicas}) to autoscale between them, or 0 for a fixed count"
            )
        if self.max_replicas < 0 or self.target_ongoing_requests <= 0:
            raise ValueError("serve options 'max_replicas' >= 0, 'target_ongoing_requests' > 0")
        if min(self.upscale_delay_s, self.downscale_delay_s, self.gpus_per_replica) < 0:
            raise ValueError(
                "serve options 'upscale_delay_s', 'downscale_delay_s', 'gpus_per_replica' >= 0"
            )
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise ValueError(
                f"serve option 'min_confidence' must be in 0..1: {self.min_confidence}"
            )

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > 0

    def replicas_said(self) -> str:
        """The model replicas, in words."""
        if not self.autoscaling:
            return f"{self.replicas} replica(s)"
        return (
            f"{self.replicas}-{self.max_replicas} replicas (autoscaling at "
            f"{self.target_ongoing_requests:g} requests in flight per replica)"
        )
