"""Self-describing checkpoints: weights + training state + what is needed to rebuild the model.

A checkpoint folder holds ``state.pt`` (model, trust head if trained with one, optimizer,
scheduler, grad scaler, epoch, best metric, per-epoch history) and ``model.json`` (backbone,
image size, normalisation, class names, resolved config). Loading uses
``torch.load(..., weights_only=True)``: no pickled code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from logo_train.models import TrustModel, build_model, with_test_views
from logo_train.storage import exists, join, read_bytes, read_json

STATE = "state.pt"
MODEL_JSON = "model.json"


@dataclass
class ModelInfo:
    backbone: str
    num_classes: int
    image_size: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    resize: str = "stretch"
    """``model.resize`` the model was trained with (older checkpoints: stretch)."""
    pretrained: str = "none"
    """Where its starting weights came from (``model.pretrained``): 'none' = random init."""
    test_views: list[float] = field(default_factory=lambda: [1.0])
    """``model.test_views``: the views whose mean logits are its answer (older checkpoints:
    the whole input)."""


def save(
    directory: str | Path,
    *,
    info: ModelInfo,
    model: nn.Module,
    trust_head: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    epoch: int,
    best_metric: float,
    history: list[dict[str, float]],
    **extra: Any,
) -> None:
    """``extra``: more training state (a multi-backbone run's position), kept in ``state.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "trust_head": trust_head.state_dict() if trust_head is not None else None,
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": epoch,
        "best_metric": best_metric,
        "history": history,
        **extra,
    }
    torch.save(state, directory / STATE)
    (directory / MODEL_JSON).write_text(json.dumps(asdict(info), indent=2))


def load_state(directory: str | Path) -> dict[str, Any]:
    """``state.pt`` of a checkpoint folder (a local path or a URI)."""
    import io

    data = read_bytes(join(str(directory), STATE))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


HISTORY_JSON = "history.json"


def run_history(run_path: str) -> list[dict[str, float]]:
    """Per-epoch metrics of one backbone's whole training (``BackboneResult.run_path``, the
    folder holding ``history.json``; the best checkpoint may be an earlier epoch)."""

    uri = join(str(run_path), HISTORY_JSON)
    if not exists(uri):
        raise FileNotFoundError(f"{uri} not found")
    return read_json(uri)


def load_info(directory: str | Path) -> ModelInfo:
    """``model.json`` of a checkpoint folder (a local path or a URI)."""

    return ModelInfo(**read_json(join(str(directory), MODEL_JSON)))


def load_model(directory: str | Path) -> tuple[nn.Module, ModelInfo]:
    """The trained model (eval mode, CPU) and its description, from a checkpoint folder: the
    classifier as it answers, with its test-time views (``models.TestViews``) when it has
    more than the whole input."""
    info = load_info(directory)
    model = build_model(info.backbone, info.num_classes, info.image_size)
    model.load_state_dict(load_state(directory)["model"])
    return with_test_views(model, info.test_views, info.image_size).eval(), info


def load_trust_model(directory: str | Path) -> tuple[nn.Module, ModelInfo]:
    """Like ``load_model``, with the trust head attached (a ``TrustModel``) when the checkpoint
    was trained with one; otherwise the bare model. For the label audit, not for serving."""
    info = load_info(directory)
    state = load_state(directory)
    model = build_model(info.backbone, info.num_classes, info.image_size)
    model.load_state_dict(state["model"])
    head_state = state.get("trust_head")
    if head_state:
        dim = head_state["label.weight"].shape[1]
        model = TrustModel(model, info.num_classes, dim)
        model.trust_head.load_state_dict(head_state)
    return model.eval(), info


def run_label(backbone: str, round: int = 1) -> str:
    """How a run's tables name a model: ``resnet10t`` for round 1 (the given labels),
    ``resnet10t-round2`` for a cleaning round's retraining."""
    return backbone if round <= 1 else f"{backbone}-round{round}"
