"""Losses: pure functions and small modules. Class weights fix the imbalance, the trust
penalty the wrong labels.

``class_weights``: ``w_c = (N_max / N_c) ** power``, normalised to mean 1; ``power = 1`` is the
reference recipe (max_count / count), ``power = 0`` no weighting.

``trust_penalty_loss`` (docs/labels.md, "The trust penalty")::

    L = mean_i(w_{y_i} * t_i * CE_i) + penalty_weight * s * mean_i(-log t_i)

where ``t_i`` is the trust head's output for sample i and its given label. For one sample the
optimum is ``t_i = min(1, penalty_weight * s / (w_{y_i} CE_i))``: a soft truncation of large
losses, so samples whose label the model cannot fit stop pulling the backbone. ``s`` is 1 in the
plain formula; with ``normalise`` it is the batch's mean weighted CE (detached). That guards
against the known collapse: early in training every CE is large (ln 28 = 3.3 at the start), so a
fixed penalty would give the whole batch a low trust and stall learning; scaled by the batch's
own loss level, the penalty only down-weights samples that are bad *relative to the batch*.
During warm-up (``active=False``) the backbone gets plain weighted CE while the head already
learns on the same objective from detached losses, so it is ready when trust switches on.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from logo_train.config import LossName

TRUST_EPS = 1e-6


def class_weights(counts: Sequence[int], power: float) -> torch.Tensor:
    """Per-class weights from training counts; a class with no samples gets weight 0."""
    counts_t = torch.as_tensor(counts, dtype=torch.float64)
    if (counts_t < 0).any():
        raise ValueError("class counts must be >= 0")
    present = counts_t > 0
    weights = torch.zeros_like(counts_t)
    weights[present] = (counts_t.max() / counts_t[present]) ** power
    weights[present] /= weights[present].mean()
    return weights.float()


def weighted_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-sample ``w_{y_i} * CE_i`` (plain CE when ``weights`` is None), shape ``(B,)``."""
    per_sample = F.cross_entropy(
        logits.float(), target, reduction="none", label_smoothing=label_smoothing
    )
    return _class_weighted(per_sample, target, weights)


def _class_weighted(
    per_sample: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """``w_{y_i} * per_sample_i`` (unchanged when ``weights`` is None)."""
    if weights is None:
        return per_sample
    return per_sample * weights.to(per_sample.device)[target]


class TrustLoss(NamedTuple):
    loss: torch.Tensor
    """What is minimised."""
    weighted_ce: torch.Tensor
    """mean_i w_{y_i} CE_i, for logging (the loss without trust)."""
    penalty: torch.Tensor
    """penalty_weight * s * mean(-log t)."""
    mean_trust: torch.Tensor


def trust_penalty_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    trust: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    penalty_weight: float,
    normalise: bool = True,
    rescale: bool = False,
    active: bool = True,
    label_smoothing: float = 0.0,
) -> TrustLoss:
    """The trust-scaled class-weighted CE plus the penalty (formula in the module docstring).

    ``rescale``: the backbone's per-sample weights are ``t_i / mean(t)`` (batch mean 1, no
    gradient to the head through the mean), so a batch whose trust is uniformly low (an
    under-trained model: every loss high) still trains at full speed; only the *relative*
    weights change. The head still learns the plain objective. The value is then
    ``mean(w t CE) / mean(t)`` plus the penalty.
    """
    if trust.shape != target.shape:
        raise ValueError(f"trust has shape {tuple(trust.shape)}, labels {tuple(target.shape)}")
    wce = weighted_ce(logits, target, weights, label_smoothing)
    trust = trust.float()
    scale = wce.mean().detach() if normalise else torch.ones((), device=wce.device)
    penalty = penalty_weight * scale * (-torch.log(trust.clamp_min(TRUST_EPS))).mean()
    head_term = (wce.detach() * trust).mean()  # what trains the head (gradient = w CE)
    if not active:  # warm-up: the backbone gets plain weighted CE
        scaled = wce.mean() + head_term
    elif rescale:
        t = trust.detach()
        scaled = (wce * t).mean() / t.mean() + head_term - head_term.detach()
    else:
        scaled = (wce * trust).mean()
    return TrustLoss(scaled + penalty, wce.mean().detach(), penalty.detach(), trust.mean())


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with fixed class weights (plain CE when ``weights`` is None).

    The mean is over samples (``sum_i w_{y_i} CE_i / N``): weights normalised to mean 1 keep
    the loss scale of plain CE, so the same learning rate serves both.
    """

    needs_trust = False

    def __init__(self, weights: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weights", weights if weights is not None else None)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return weighted_ce(logits, target, self.weights, self.label_smoothing).mean()


def generalised_ce(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, q: float
) -> torch.Tensor:
    """Per-sample ``w_{y_i} * (1 - p_{y_i} ** q) / q`` (Zhang & Sabuncu, NeurIPS 2018), shape
    ``(B,)``. Bounded by ``w / q``: a sample whose label the model cannot fit pulls no harder
    than one it nearly fits, where cross-entropy's pull grows without bound."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]
    return _class_weighted((1.0 - torch.exp(q * log_p)) / q, target, weights)


class RobustLoss(NamedTuple):
    loss: torch.Tensor
    """What is minimised."""
    weighted_ce: torch.Tensor
    """mean_i w_{y_i} CE_i, for logging (comparable across losses)."""


class GeneralisedCrossEntropy(nn.Module):
    """``generalised_ce`` with fixed class weights, after a warm-up of weighted CE
    (``active=False``): from random init the bounded loss learns slowly."""

    needs_trust = False
    warms_up = True

    def __init__(self, weights: torch.Tensor | None, q: float, label_smoothing: float = 0.0):
        super().__init__()
        if not 0 < q <= 1:
            raise ValueError(f"q must be in (0, 1], got {q}")
        self.register_buffer("weights", weights)
        self.q = q
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor, active: bool = True):
        wce = weighted_ce(logits, target, self.weights, self.label_smoothing)
        if not active:
            return RobustLoss(wce.mean(), wce.mean().detach())
        loss = generalised_ce(logits, target, self.weights, self.q).mean()
        return RobustLoss(loss, wce.mean().detach())


class TrustPenalty(nn.Module):
    """``trust_penalty_loss`` with fixed class weights; call with the trust head's output."""

    needs_trust = True

    def __init__(
        self,
        weights: torch.Tensor | None,
        penalty_weight: float,
        normalise: bool = True,
        label_smoothing: float = 0.0,
        rescale: bool = False,
    ):
        super().__init__()
        if penalty_weight <= 0:
            raise ValueError(f"penalty_weight must be > 0, got {penalty_weight}")
        self.register_buffer("weights", weights)
        self.penalty_weight = penalty_weight
        self.normalise = normalise
        self.rescale = rescale
        self.label_smoothing = label_smoothing

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, trust: torch.Tensor, active: bool = True
    ) -> TrustLoss:
        return trust_penalty_loss(
            logits,
            target,
            trust,
            weights=self.weights,
            penalty_weight=self.penalty_weight,
            normalise=self.normalise,
            rescale=self.rescale,
            active=active,
            label_smoothing=self.label_smoothing,
        )


LOSSES = typing.get_args(LossName)


def build_loss(
    name: str,
    counts: Sequence[int],
    class_weight_power: float,
    *,
    penalty_weight: float = 1.0,
    normalise: bool = True,
    rescale: bool = False,
    label_smoothing: float = 0.0,
    gce_q: float = 0.7,
) -> nn.Module:
    """``ce``: plain cross-entropy; ``ce_weighted``: class-weighted (the reference recipe);
    ``trust_penalty``: class-weighted CE scaled by the trust head, plus the penalty; ``gce``:
    class-weighted generalised cross-entropy after a weighted-CE warm-up."""
    if name == "ce":
        return WeightedCrossEntropy(None, label_smoothing)
    if name == "ce_weighted":
        return WeightedCrossEntropy(class_weights(counts, class_weight_power), label_smoothing)
    if name == "trust_penalty":
        return TrustPenalty(
            class_weights(counts, class_weight_power),
            penalty_weight,
            normalise,
            label_smoothing,
            rescale,
        )
    if name == "gce":
        weights = class_weights(counts, class_weight_power)
        return GeneralisedCrossEntropy(weights, gce_q, label_smoothing)
    raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
