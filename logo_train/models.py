"""One backbone registry on ``timm.create_model``: the five reference backbones and a small
member of each family for the quick profile and the tests.

Image-size handling per family:

* MobileNetV2 and EfficientNetV2 below 64 px: the stem convolution keeps stride 1
  (``_fit_mobile_stem``), so a 32 px input ends on a 2x2 map as a 64 px one would.
* Swin takes ``img_size`` and ``window_size``: 224 px keeps the window of 7, other sizes use a
  window of ``image_size // 16`` (64 px -> 4), so the patch grid divides into windows.
* EfficientFormer (L1) builds its last-stage attention bias table for a 7x7 token map, i.e.
  224 px input. At other sizes we rebuild each ``Attention`` for the actual map
  (``image_size // 32``) and resize its learned bias table bilinearly, the way timm resizes
  Swin's relative-position tables, so a 224 px weights file still carries over. Its
  distillation head is tied to the main head: timm always averages the two, and tying them
  gives the plain single-head model (11,404,500 parameters with 28 classes, as in DESIGN.md).

The trust head (``TrustHead``, wrapped with a backbone in ``TrustModel``) scores how much a
training sample's *given label* agrees with its image; it is used by the ``trust_penalty`` loss
and the label audit, never at inference, and is not exported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

Family = Literal["resnet", "mobilenetv2", "swin", "efficientformer", "efficientnetv2"]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    """Name used in configs and reports."""
    family: Family
    timm_name: str
    """The timm model it is built from (also the name of its pretrained weights)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Fixed constructor overrides (smaller widths/depths for the small members)."""
    size: Literal["full", "small"] = "full"


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec("resnet50", "resnet", "resnet50"),
        BackboneSpec("mobilenetv2_100", "mobilenetv2", "mobilenetv2_100"),
        BackboneSpec("swin_tiny_patch4_window7_224", "swin", "swin_tiny_patch4_window7_224"),
        BackboneSpec("efficientformer_l1", "efficientformer", "efficientformer_l1"),
        BackboneSpec("efficientnetv2_s", "efficientnetv2", "efficientnetv2_s"),
        # small members, for 2-core laptops and tests
        BackboneSpec("resnet10t", "resnet", "resnet10t", size="small"),
        BackboneSpec("mobilenetv2_050", "mobilenetv2", "mobilenetv2_050", size="small"),
        BackboneSpec(
            "swin_nano",
            "swin",
            "swin_tiny_patch4_window7_224",
            {"embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8)},
            size="small",
        ),
        BackboneSpec(
            "efficientformer_nano",
            "efficientformer",
            "efficientformer_l1",
            {"depths": (1, 1, 2, 2), "embed_dims": (32, 64, 128, 256)},
            size="small",
        ),
        BackboneSpec(
            "efficientnetv2_nano",
            "efficientnetv2",
            "efficientnetv2_s",
            {"channel_multiplier": 0.5, "depth_multiplier": 0.5},
            size="small",
        ),
    ]
}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {sorted(BACKBONES)}")
    return BACKBONES[name]


def check_image_size(name: str, image_size: int) -> None:
    """Raise (naming ``model.image_size``) if a backbone cannot take this input size."""
    family = get_spec(name).family
    multiple = {"swin": 32, "efficientformer": 32}.get(family, 1)
    if image_size % multiple:
        raise ValueError(
            f"config field 'model.image_size' = {image_size}: {name} ({family}) needs a "
            f"multiple of {multiple}"
        )


def _size_kwargs(spec: BackboneSpec, image_size: int) -> dict[str, Any]:
    if spec.family == "swin" and image_size != 224:
        return {"img_size": image_size, "window_size": image_size // 16}
    return {}


SMALL_INPUT = 64
"""Below this input size the MobileNetV2 / EfficientNetV2 stems keep full resolution."""


def _fit_mobile_stem(model: nn.Module, image_size: int) -> None:
    """Stride 1 in the stem of a stride-32 mobile network at small inputs: at 32 px it would
    otherwise end on a 1x1 map after its first block (measured: clean-test macro-F1 0.04 ->
    0.18 for mobilenetv2_050, 0.14 -> 0.41 for efficientnetv2_nano in 8 epochs,
    docs/benchmarks.md). No parameter changes, so weight files still load."""
    if image_size < SMALL_INPUT:
        model.conv_stem.stride = (1, 1)


def _fit_efficientformer(model: nn.Module, image_size: int) -> None:
    from timm.models.efficientformer import Attention

    model.head_dist = model.head  # tie: forward averages head and head_dist
    resolution = image_size // 32
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, Attention) or resolution == 7:
                continue
            new = Attention(
                dim=child.qkv.in_features,
                key_dim=child.key_dim,
                num_heads=child.num_heads,
                attn_ratio=child.attn_ratio,
                resolution=resolution,
            )
            new.qkv.load_state_dict(child.qkv.state_dict())
            new.proj.load_state_dict(child.proj.state_dict())
            with torch.no_grad():
                old = child.attention_biases.reshape(child.num_heads, 1, 7, 7)
                resized = nn.functional.interpolate(
                    old, size=(resolution, resolution), mode="bilinear", align_corners=False
                )
                new.attention_biases.copy_(resized.reshape(child.num_heads, -1))
            setattr(parent, child_name, new)


_POST_BUILD: dict[str, Callable[[nn.Module, int], None]] = {
    "efficientformer": _fit_efficientformer,
    "mobilenetv2": _fit_mobile_stem,
    "efficientnetv2": _fit_mobile_stem,
}


def build_model(
    name: str,
    num_classes: int,
    image_size: int,
    *,
    pretrained: bool = False,
    pretrained_file: str = "",
) -> nn.Module:
    """A timm model for ``name`` at ``image_size``; random init unless weights are asked for.

    ``pretrained=True`` fetches timm's weights from its hub (needs network);
    ``pretrained_file`` loads a local timm-compatible weights file (.pth/.bin/.safetensors)
    instead. A classifier of another size in the file is skipped (timm drops it).
    """
    spec = get_spec(name)
    check_image_size(name, image_size)
    kwargs = {**spec.kwargs, **_size_kwargs(spec, image_size), "num_classes": num_classes}
    if pretrained_file:
        kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
    try:
        model = timm.create_model(
            spec.timm_name, pretrained=bool(pretrained or pretrained_file), **kwargs
        )
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model.pretrained_file not found: {pretrained_file}") from e
    if spec.family in _POST_BUILD:
        _POST_BUILD[spec.family](model, image_size)
    if not (pretrained or pretrained_file):
        _zero_init_classifier(model)
        if spec.family in ("mobilenetv2", "efficientnetv2"):
            _zero_init_residuals(model)
    return model


def _zero_init_residuals(model: nn.Module) -> None:
    """Every residual block of a mobile network starts as the identity: the last batch norm of
    its branch gets gamma 0, as timm does for ResNets (``zero_init_last``) and Goyal et al.
    (2017) recommend; timm's MobileNetV2 / EfficientNetV2 blocks do not. From random init at
    32 px, in process: efficientnetv2_nano clean-test macro-F1 0.33 -> 0.44 in 6 epochs,
    mobilenetv2_050 0.56 in 10 epochs against 0.42 in 16 without (docs/benchmarks.md)."""
    from timm.models._efficientnet_blocks import EdgeResidual, InvertedResidual

    for block in model.modules():
        if not getattr(block, "has_skip", False):
            continue
        if isinstance(block, InvertedResidual):
            nn.init.zeros_(block.bn3.weight)
        elif isinstance(block, EdgeResidual):
            nn.init.zeros_(block.bn2.weight)


def _zero_init_classifier(model: nn.Module) -> None:
    """Start from uniform predictions: every sample's loss is ln(num_classes) at step 0.

    timm's default head inits give some families (MobileNetV2: loss ~5.5 with 28 classes
    instead of ln 28 = 3.3) large random logits that take many steps to unlearn.
    """
    heads = model.get_classifier()
    for head in heads if isinstance(heads, tuple) else (heads,):
        if isinstance(head, nn.Linear):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (a tied module counts once)."""
    return sum(p.numel() for p in model.parameters())


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std from the model's own timm data config (one place, for train and serve)."""
    data_cfg = timm.data.resolve_model_data_config(model)
    return tuple(data_cfg["mean"]), tuple(data_cfg["std"])


# --- the trust head ---------------------------------------------------------------------------


def feature_tokens(features: torch.Tensor, num_features: int) -> torch.Tensor:
    """A backbone's ``forward_features`` output as tokens ``(B, N, C)``, whatever the family:
    CNNs give ``(B, C, H, W)``, timm's Swin ``(B, H, W, C)``, EfficientFormer ``(B, N, C)``."""
    if features.ndim == 3 and features.shape[-1] == num_features:
        return features
    if features.ndim == 4 and features.shape[1] == num_features:
        return features.flatten(2).transpose(1, 2)
    if features.ndim == 4 and features.shape[-1] == num_features:
        return features.flatten(1, 2)
    raise ValueError(
        f"cannot read features of shape {tuple(features.shape)} as tokens of width {num_features}"
    )


class TrustHead(nn.Module):
    """Label-conditioned attention: trust ``t_i`` in (0, 1) that the given label fits the image.

    The given label's learned embedding is the query; the backbone's feature tokens (one per
    position of the last feature map, or per transformer token) are keys and values. The
    attended summary ``z``, the label embedding ``q`` and their product go through a small MLP
    to one logit. A head that saw only the image could not tell a wrong label from a hard
    image; this one can learn "these features do not look like class y". It starts trusting
    (sigmoid(2) = 0.88) so the first steps are close to plain cross-entropy.
    """

    def __init__(self, in_features: int, num_classes: int, dim: int = 64):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(in_features)
        self.key = nn.Linear(in_features, dim)
        self.value = nn.Linear(in_features, dim)
        self.label = nn.Embedding(num_classes, dim)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        nn.init.constant_(self.mlp[-1].bias, 2.0)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``(B, N, C)``, ``labels`` ``(B,)`` -> trust ``(B,)`` in (0, 1)."""
        tokens = self.norm(tokens)
        query = self.label(labels)  # (B, d)
        keys, values = self.key(tokens), self.value(tokens)  # (B, N, d)
        scores = torch.einsum("bnd,bd->bn", keys, query) / math.sqrt(self.dim)
        summary = torch.einsum("bn,bnd->bd", scores.softmax(dim=1), values)
        logit = self.mlp(torch.cat([summary, query, summary * query], dim=-1)).squeeze(-1)
        return torch.sigmoid(logit)


class TrustModel(nn.Module):
    """A backbone plus its trust head, one module so DDP sees every parameter.

    ``model(x)`` gives logits (inference); ``model(x, labels)`` gives ``(logits, trust)``. The
    head reads *detached* features: it learns to judge labels without pulling the backbone's
    features towards whatever makes trust easy; the backbone is steered by trust only through
    the loss weights.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dim: int = 64):
        super().__init__()
        self.backbone = backbone
        self.trust_head = TrustHead(backbone.num_features, num_classes, dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is None:
            return self.backbone(x)
        features = self.backbone.forward_features(x)
        logits = self.backbone.forward_head(features)
        tokens = feature_tokens(features.detach(), self.backbone.num_features)
        with torch.autocast(device_type=x.device.type, enabled=False):
            trust = self.trust_head(tokens.float(), labels)
        return logits, trust
