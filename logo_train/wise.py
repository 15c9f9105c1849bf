"""WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) for a backbone
fine-tuned from pretrained weights: after training, its best weights are moved back towards
the weights it started from, ``alpha * fine-tuned + (1 - alpha) * start`` tensor by tensor
(batch-norm statistics too; the classifier, new in fine-tuning, is kept as trained).
Fine-tuning on renders distorts features that real photos still need; the average keeps part
of them. ``train.wise_alpha`` (1 = off); measured on two real development sets
(docs/benchmarks.md, "WiSE-FT").

The train stage applies it on the driver once a backbone's training has finished
(``apply``): the averaged model is validated, and replaces ``best/`` unless its validation
macro-F1 fell more than ``train.wise_max_drop`` (a guard: on a cleaning round's relabelled
data the average lost 0.026 once); ``result.json`` records both validation scores and the
verdict under ``wise`` (the report's choice on validation sees the model it hands over). A
second call (a resumed run) finds the mark and does nothing.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import torch
from torch import nn

from logo_train import checkpoint as ckpt
from logo_train.backbones import NONE, weights_source
from logo_train.config import Config
from logo_train.data.shards import Manifest
from logo_train.storage import join, read_json, write_bytes, write_json
from logo_train.worker import BEST, RESULT_JSON

log = logging.getLogger(__name__)


def interpolate(
    tuned: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    alpha: float,
    keep: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """``alpha * tuned + (1 - alpha) * start`` for every floating-point tensor whose name does
    not start with one of ``keep`` (the classifier); the others (``keep``, integer counters) as
    ``tuned`` has them. Both state dicts must name the same tensors."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"config field 'train.wise_alpha' = {alpha}: expected 0..1")
    missing = sorted(set(tuned) ^ set(start))
    if missing:
        raise ValueError(f"WiSE-FT: the two models differ in tensors {missing[:5]}")
    out = {}
    for name, value in tuned.items():
        mixed = value.is_floating_point() and not name.startswith(keep)
        out[name] = alpha * value + (1 - alpha) * start[name].to(value.dtype) if mixed else value
    return out


def starting_weights(cfg: Config, backbone: str, num_classes: int) -> dict[str, torch.Tensor]:
    """The weights the backbone's training started from: ``train.start_from``'s checkpoint, or
    ``model.pretrained``'s (the classifier there is new: ``interpolate`` keeps the trained one)."""
    from logo_train.engine import start_from
    from logo_train.models import build_model

    weights = weights_source(cfg.model, backbone)
    model = build_model(
        backbone,
        num_classes,
        cfg.model.image_size,
        weights=NONE if cfg.train.start_from else weights,
        field=f"model.pretrained.{backbone}",
    )
    if cfg.train.start_from:
        start_from(model, cfg.train.start_from)
    return model.state_dict()


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    from logo_train.weights import classifier_names

    return tuple(f"{name}." for name in classifier_names(model))


def apply(
    cfg: Config, backbone: str, output_uri: str, shards_uri: str, manifest: Manifest
) -> dict[str, Any] | None:
    """WiSE-FT of one trained backbone (``output_uri``: ``<run>/<backbone>``), when its
    ``train.wise_alpha`` is below 1 and it started from weights; returns what ``result.json``
    records under ``wise`` (None when it does not apply)."""
    from logo_train.local import evaluate_split

    alpha = cfg.train.wise_alpha
    if alpha >= 1 or (weights_source(cfg.model, backbone) == NONE and not cfg.train.start_from):
        return None
    result_uri = join(output_uri, RESULT_JSON)
    result = read_json(result_uri)
    best = join(output_uri, BEST)
    state = ckpt.load_state(best)
    if "wise" in result or "wise" in state:  # done before this (a resumed run)
        return result.get("wise") or state["wise"]
    model, _ = ckpt.load_model(best)
    start = starting_weights(cfg, backbone, len(manifest.classes))
    model.load_state_dict(interpolate(model.state_dict(), start, alpha, classifier_prefixes(model)))
    model.eval()
    val = evaluate_split(model, cfg, backbone, shards_uri, manifest, "val")
    before = result["best_val_macro_f1"]
    kept = val["macro_f1"] >= before - cfg.train.wise_max_drop
    wise = {
        "alpha": alpha,
        "val_macro_f1_before": before,
        "val_macro_f1": val["macro_f1"],
        "kept": kept,
    }
    if kept:
        state["model"] = model.state_dict()
    state["wise"] = wise  # also when not kept: a resumed run does not try again
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(join(best, ckpt.STATE), buffer.getvalue())
    result.update(wise=wise, best_val_macro_f1=val["macro_f1"] if kept else before)
    write_json(result_uri, result)
    log.info(
        "%s: WiSE-FT alpha %.2f, validation macro-F1 %.4f -> %.4f: %s",
        backbone,
        alpha,
        before,
        val["macro_f1"],
        "kept"
        if kept
        else f"more than train.wise_max_drop {cfg.train.wise_max_drop} lower, "
        "the trained weights stay",
    )
    return wise
