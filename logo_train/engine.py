"""One training step, the same everywhere: the model (with the trust head when the loss needs
one), loss, optimiser, OneCycle schedule, AMP, and evaluation. A Ray Train worker
(``logo_train.train``) and the in-process loop (``logo_train.local``) both build on this; it
does not import Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from logo_train.config import Config
from logo_train.losses import build_loss
from logo_train.metrics import classification_metrics
from logo_train.models import TrustModel, build_model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory: no weight decay on norms and biases; ``sgd`` is SGD with
    Nesterov momentum 0.9."""
    return create_optimizer_v2(
        model, cfg.train.optimizer, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )


def evaluate(model: nn.Module, batches, device: torch.device, num_classes: int) -> dict[str, float]:
    """Loss (plain CE) and classification metrics over every batch of a split."""
    model.eval()
    loss_sum, n, y_true, y_pred = 0.0, 0, [], []
    with torch.inference_mode():
        for batch in batches:
            x, y = batch["image"].to(device), batch["label"].to(device)
            logits = model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            n += len(y)
            y_true += y.tolist()
            y_pred += logits.argmax(1).tolist()
    metrics = classification_metrics(y_true=y_true, y_pred=y_pred, num_classes=num_classes)
    return {"loss": loss_sum / max(n, 1), **metrics, "samples": n}


@dataclass
class Training:
    """Everything one training run steps: the same for a Ray worker and a local loop."""

    model: nn.Module
    """The backbone, or a ``TrustModel`` (backbone + trust head) for ``trust_penalty``;
    DDP-wrapped on a Ray worker."""
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    use_amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    total_steps: int

    @property
    def needs_trust(self) -> bool:
        return bool(getattr(self.criterion, "needs_trust", False))


def build_training(
    cfg: Config,
    backbone: str,
    num_classes: int,
    train_counts: list[int],
    steps_per_epoch: int,
    device: torch.device,
    wrap=None,
) -> Training:
    """Model (with trust head when the loss needs one), loss, optimizer, OneCycle, AMP.

    ``wrap`` places the model (``ray.train.torch.prepare_model`` on a worker); without it the
    model is moved to ``device``.
    """
    tc = cfg.train
    cuda = device.type == "cuda"
    model = build_model(
        backbone,
        num_classes,
        cfg.model.image_size,
        pretrained=cfg.model.pretrained,
        pretrained_file=cfg.model.pretrained_files.get(backbone, ""),
    )
    criterion = build_loss(
        tc.loss,
        train_counts,
        tc.class_weight_power,
        penalty_weight=tc.penalty_weight,
        normalise=tc.trust_normalise,
        rescale=tc.trust_rescale,
        label_smoothing=tc.label_smoothing,
    ).to(device)
    if criterion.needs_trust:
        model = TrustModel(model, num_classes, tc.trust_dim)
    # on CPU too: oneDNN's depthwise convolutions run 1.6-1.9x faster in NHWC (MobileNetV2,
    # EfficientNetV2 at 32 px, 2 threads; docs/benchmarks.md)
    channels_last = tc.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = wrap(model) if wrap else model.to(device)
    optimizer = _optimizer(cfg, model)
    total_steps = tc.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=tc.lr, total_steps=total_steps, pct_start=tc.warmup_fraction
    )
    use_amp = cuda and tc.amp
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return Training(
        model=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        device=device,
        use_amp=use_amp,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        total_steps=total_steps,
    )


def classifier(model: nn.Module) -> nn.Module:
    """The bare backbone (what is checkpointed as ``model`` and exported), whatever wraps it."""
    model = unwrap(model)
    return model.backbone if isinstance(model, TrustModel) else model


def trust_head(model: nn.Module) -> nn.Module | None:
    model = unwrap(model)
    return model.trust_head if isinstance(model, TrustModel) else None


def train_step(t: Training, x: torch.Tensor, y: torch.Tensor, trust_active: bool) -> dict:
    """One optimisation step. Returns tensors: ``loss``, the batch's (class-weighted)
    cross-entropy, comparable across losses and with validation's; ``objective``, what was
    minimised (with the trust head's term and the penalty under ``trust_penalty``); ``trust``,
    the mean trust."""
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=t.device.type, dtype=t.amp_dtype, enabled=t.use_amp):
        if t.needs_trust:
            logits, trust = t.model(x, y)
            parts = t.criterion(logits, y, trust, active=trust_active)
            loss = parts.loss
            out = {"trust": parts.mean_trust.detach(), "loss": parts.weighted_ce.detach()}
        else:
            loss = t.criterion(t.model(x), y)
            out = {"loss": loss.detach()}
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    t.scaler.step(t.optimizer)
    t.scaler.update()
    if t.scheduler.last_epoch < t.total_steps - 1:  # a few extra batches must not overrun
        t.scheduler.step()
    out["objective"] = loss.detach()
    return out
