"""Losses: pure functions and small modules. Class weights fix the imbalance.

``class_weights``: ``w_c = (N_max / N_c) ** power``, normalised to mean 1; ``power = 1`` is the
reference recipe (max_count / count), ``power = 0`` no weighting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


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


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with fixed class weights (plain CE when ``weights`` is None).

    The mean is over samples (``sum_i w_{y_i} CE_i / N``): weights normalised to mean 1 keep
    the loss scale of plain CE, so the same learning rate serves both.
    """

    def __init__(self, weights: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weights", weights if weights is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, target, reduction="none")
        if self.weights is not None:
            per_sample = per_sample * self.weights.to(per_sample.dtype)[target]
        return per_sample.mean()


def build_loss(name: str, counts: Sequence[int], class_weight_power: float) -> nn.Module:
    """``ce``: plain cross-entropy; ``ce_weighted``: class-weighted (the reference recipe)."""
    if name == "ce":
        return WeightedCrossEntropy(None)
    if name == "ce_weighted":
        return WeightedCrossEntropy(class_weights(counts, class_weight_power))
    raise ValueError(f"unknown loss {name!r}: expected 'ce' or 'ce_weighted'")
