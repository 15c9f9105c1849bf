"""One backbone registry on ``timm.create_model``: the five reference backbones and a small
member of each family for the quick profile and the tests.

Image-size handling per family:

* MobileNetV2 and EfficientNetV2 below 64 px: the stem convolution keeps stride 1
  (``_fit_mobile_stem``), so a 32 px input ends on a 2x2 map as a 64 px one would.
* Swin takes ``img_size`` and ``window_size``: 224 px keeps the window of 7, other sizes use a
  window of ``image_size // 16`` (64 px -> 4), so the patch grid divides into windows.
  swin_nano (random init, small inputs) replaces the patchify convolution by a convolutional
  stem (``conv_stem``); swin_tiny keeps timm's, so its ImageNet weights load.
* EfficientFormer (L1) builds its last-stage attention bias table for a 7x7 token map, i.e.
  224 px input. At other sizes we rebuild each ``Attention`` for the actual map
  (``image_size // 32``) and resize its learned bias table bilinearly, the way timm resizes
  Swin's relative-position tables, so a 224 px weights file still carries over. Its
  distillation head is tied to the main head: timm always averages the two, and tying them
  gives the plain single-head model (11,404,500 parameters with 28 classes, as the reference
  project counts it; docs/training.md, "Backbones").

``efficientnet_lite0`` is the pretrained backbone: timm's ``tf_efficientnet_lite0`` (TensorFlow's
"same" padding and batch-norm epsilon, as the weights were trained) with ImageNet weights from
an installed package by default (``logo_train.weights``), so it fine-tunes with no network.
Its input normalisation is TensorFlow-Lite's ``(x - 0.5) / 0.5``, timm's data config for it
(measured: ``benchmarks/pretrained_check.py``, docs/training.md).

The trust head (``TrustHead``, wrapped with a backbone in ``TrustModel``) scores how much a
training sample's *given label* agrees with its image; it is used by the ``trust_penalty`` loss
and the label audit, never at inference, and is not exported.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from logo_train.backbones import (
    BACKBONES,
    HUB,
    NONE,
    PACKAGE,
    BackboneSpec,
    check_image_size,
    get_spec,
    hub_problem,
)
from logo_train.weights import (
    WeightsError,
    check_hub,
    classifier_names,
    detect_layout,
    load_state_into,
    package_file,
    read_state,
)

log = logging.getLogger(__name__)


def _size_kwargs(spec: BackboneSpec, image_size: int) -> dict[str, Any]:
    if spec.family == "swin" and image_size != 224:
        return {"img_size": image_size, "window_size": image_size // 16}
    return {}


SMALL_INPUT = 64
"""Below this input size the MobileNetV2 / EfficientNetV2 stems keep full resolution."""


def _fit_mobile_stem(model: nn.Module, image_size: int) -> None:
    """Stride 1 in the stem of a stride-32 mobile network at small inputs: at 32 px it would
    otherwise end on a 1x1 map after its first block (measured: clean-test macro-F1 0.04 ->
    0.18 for mobilenetv2_050, 0.14 -> 0.41 for efficientnetv2_nano in 8 epochs, 2026-11).
    No parameter changes, so weight files still load."""
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


def conv_stem(model: nn.Module) -> None:
    """Swin's patchify convolution (kernel = stride = patch size 4) becomes a convolutional
    stem of the same stride: 3x3 stride-2 convolutions with batch norm and ReLU, widths
    doubling up to the embedding width, then a 1x1 convolution (Xiao et al. 2021, "Early
    Convolutions Help Transformers See Better"). Random-init swin_nano at 32 px on the quick
    data, in process, 12 epochs: clean-test macro-F1 0.228 with the patchify convolution,
    0.512 with this stem at the same lr 5e-4, 0.599 at lr 1e-3 (docs/training.md)."""
    proj = model.patch_embed.proj
    stride, dim = proj.stride[0], proj.out_channels
    steps = int(math.log2(stride))
    if 2**steps != stride or proj.kernel_size[0] != stride:
        raise ValueError(f"conv_stem: expects a patchify convolution of stride 2^k, got {proj}")
    layers: list[nn.Module] = []
    width_in = proj.in_channels
    for i in range(steps):
        width = dim // 2 ** (steps - 1 - i)
        layers += [
            nn.Conv2d(width_in, width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        width_in = width
    model.patch_embed.proj = nn.Sequential(*layers, nn.Conv2d(dim, dim, 1))


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one axis: (before, after), ``after`` the larger."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """TensorFlow's "same" padding without padding the input: the convolution pads both sides
    by at least the larger "same" amount, as much more as keeps the windows where "same" puts
    them (a multiple of the stride), and the extra leading outputs are sliced off. timm's
    ``Conv2dSame`` pads the input with ``F.pad`` first, a copy of the whole input map: on 2 CPU
    cores the copies took ~10% of a fine-tuning step of ``tf_efficientnet_lite0`` at 112 px
    (py-spy of a training worker). Same parameters and outputs (to float rounding);
    ``_padding_in_conv`` puts it in place of timm's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads, keep = [], []
        axes = zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True)
        for size, k, s, d in axes:
            before, after = _same_pads(size, k, s, d)
            pad = before + s * math.ceil((after - before) / s)
            first = (pad - before) // s
            pads.append(pad)
            keep.append(slice(first, first + math.ceil(size / s)))
        y = nn.functional.conv2d(
            x, self.weight, self.bias, self.stride, tuple(pads), self.dilation, self.groups
        )
        return y[..., keep[0], keep[1]]


def _padding_in_conv(model: nn.Module) -> None:
    """Every timm ``Conv2dSame`` of ``model`` becomes a ``SameConv2d`` (same parameters)."""
    from timm.layers.conv2d_same import Conv2dSame

    for module in model.modules():
        if type(module) is Conv2dSame:
            module.__class__ = SameConv2d


def _create(spec: BackboneSpec, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` without weights, with the spec's own architecture changes."""
    model = timm.create_model(spec.timm_name, **kwargs)
    if spec.conv_stem:
        conv_stem(model)
    return model


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
    weights: str = NONE,
    field: str = "model.pretrained",
) -> nn.Module:
    """A timm model for ``name`` at ``image_size``, with ``weights`` (``logo_train.weights``):
    'none' (random init), 'hub' (timm's hub: needs network), 'package' (the registry's weights
    package) or a weights file (path or URI). ImageNet's classifier is replaced by one for
    ``num_classes``. ``field`` names the config field in errors."""
    spec = get_spec(name)
    check_image_size(name, image_size)
    kwargs = {**spec.kwargs, **_size_kwargs(spec, image_size), "num_classes": num_classes}
    new_head = True  # ImageNet's (or a file's other-sized) classifier is replaced
    if weights == HUB:
        if hub_problem(name):
            raise WeightsError(f"config field '{field}' = 'hub': {hub_problem(name)}")
        check_hub(field)
        model = timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    elif weights in (NONE, PACKAGE):
        model = _create(spec, kwargs)
        if weights == PACKAGE:
            _load_package(model, spec, field)
    else:
        model, new_head = _load_file(spec, weights, kwargs, field)
    if spec.family in _POST_BUILD:
        _POST_BUILD[spec.family](model, image_size)
    _padding_in_conv(model)
    if new_head:
        _zero_init_classifier(model)
    if weights == NONE and spec.family in ("mobilenetv2", "efficientnetv2"):
        _zero_init_residuals(model)
    return model


def _load_package(model: nn.Module, spec: BackboneSpec, field: str) -> None:
    if spec.package is None:
        raise WeightsError(
            f"config field '{field}' = 'package': {spec.name} has no weights package "
            f"(those that do: {sorted(n for n, s in BACKBONES.items() if s.package)})"
        )
    path = package_file(spec.package, field)
    state = read_state(path.read_bytes(), str(path), field)
    loaded = load_state_into(model, state, spec.package.layout, field)
    log.info(
        "%s: ImageNet weights from %s (%d tensors; new classifier: %s)",
        spec.name,
        spec.package.distribution,
        len(loaded["loaded"]),
        ", ".join(loaded["new"]),
    )


def _load_file(
    spec: BackboneSpec, uri: str, kwargs: dict[str, Any], field: str
) -> tuple[nn.Module, bool]:
    """A local (or URI) weights file: a foreign layout is mapped and loaded exactly; a timm
    state dict goes through timm's own loader (strict; it adapts what a size needs, e.g.
    Swin's position tables), the classifier dropped when its size differs. Returns the model
    and whether its classifier is new (not from the file)."""
    import tempfile

    from logo_train.storage import is_file, read_bytes

    if not is_file(uri):
        raise FileNotFoundError(f"config field '{field}' = {uri!r}: weights file not found")
    data = read_bytes(uri)
    state = read_state(data, uri, field)
    layout = detect_layout(state)
    if layout != "timm" or spec.conv_stem:  # timm's loader knows no conv stem
        model = _create(spec, kwargs)
        return model, bool(load_state_into(model, state, layout, field)["new"])
    suffix = os.path.splitext(uri)[1] or ".pth"
    with tempfile.TemporaryDirectory() as tmp:  # timm reads a local file
        local = os.path.join(tmp, "weights" + suffix)
        with open(local, "wb") as f:
            f.write(data)
        try:
            model = timm.create_model(
                spec.timm_name, pretrained=True, pretrained_cfg_overlay={"file": local}, **kwargs
            )
        except RuntimeError as e:  # load_state_dict's own list of missing / unexpected keys
            raise WeightsError(f"config field '{field}' = {uri!r}: {e}") from None
    own = model.state_dict()
    head_key = f"{classifier_names(model)[0]}.weight"
    same = head_key in state and head_key in own
    return model, not (same and state[head_key].shape == own[head_key].shape)


def freeze_leading(model: nn.Module, groups: int) -> list[nn.Module]:
    """Freeze the first ``groups`` of the model's parameter groups (timm's coarse
    ``group_matcher``: the stem, then one group per stage of blocks): no gradients, and the
    returned modules are to be kept in eval mode (their batch-norm statistics stay the
    pretrained ones). On a CPU this skips the backward pass through the high-resolution early
    layers, where most of a fine-tuning step's time goes (docs/training.md)."""
    if groups <= 0:
        return []
    from timm.models import group_modules

    grouping = group_modules(model, model.group_matcher(coarse=True))
    ids = sorted(grouping)
    if groups >= len(ids) - 1:  # the last group holds the classifier
        raise ValueError(
            f"config field 'train.frozen_stages' = {groups}: the model has {len(ids)} parameter "
            f"groups, the last the classifier: at most {len(ids) - 2}"
        )
    modules = [model.get_submodule(name) for g in ids[:groups] for name in grouping[g]]
    for module in modules:
        module.requires_grad_(False)
    return modules


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX; Linux's cpuinfo
    flags): elsewhere oneDNN emulates it, slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def frozen_in_bfloat16(model: nn.Module, frozen: list[nn.Module]) -> None:
    """While ``model`` trains, its ``frozen`` modules (``freeze_leading``'s leading stages, no
    gradients) run under CPU bfloat16 autocast and the last of them hands float32 on to the
    layers that learn. Their work is mostly memory-bound (batch norm and activations at high
    resolution: half the bytes in bfloat16), so on a CPU with bfloat16 in hardware the
    frozen stem and 3 stages of Lite0 at 112 px take 84 instead of 190 ms a batch of 64; their
    features differ by ~2% (relative norm). In eval mode (validation, audit, benchmark,
    export) the model runs as loaded, in float32."""
    if not frozen:
        return

    def low_precision(forward):
        def run(*args, **kwargs):
            if not model.training:
                return forward(*args, **kwargs)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return forward(*args, **kwargs)

        return run

    for module in frozen:
        module.forward = low_precision(module.forward)
    order = {id(m): i for i, m in enumerate(model.modules())}
    last = max(frozen, key=lambda m: order[id(m)])
    last.register_forward_hook(
        lambda _m, _i, out: out.float() if model.training and torch.is_tensor(out) else out
    )


def _zero_init_residuals(model: nn.Module) -> None:
    """Every residual block of a mobile network starts as the identity: the last batch norm of
    its branch gets gamma 0, as timm does for ResNets (``zero_init_last``) and Goyal et al.
    (2017) recommend; timm's MobileNetV2 / EfficientNetV2 blocks do not. From random init at
    32 px, in process: efficientnetv2_nano clean-test macro-F1 0.33 -> 0.44 in 6 epochs,
    mobilenetv2_050 0.56 in 10 epochs against 0.42 in 16 without (2026-11)."""
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


# --- test-time views ---------------------------------------------------------------------------


class TestViews(nn.Module):
    """A classifier that looks at each input more than once and answers with the mean logits:
    one view per entry of ``views``, the centre square of that share of the side, resized back
    to the input size (1.0: the whole input): for photos framed more loosely than the
    training crops. Off in the profiles: the whole input with its centre 80% gained 0.7 points
    on the renders' test split but lost 1-2 on real close-ups (two models, two real sets:
    docs/benchmarks.md, "Real photos"). The views run as one batch; the export to ONNX keeps
    them (a slice and a bilinear resize), so every runtime answers the same. With a linear
    head, the mean logits are the head of the mean pooled features."""

    __test__ = False  # a module, not a pytest class

    def __init__(self, model: nn.Module, views: list[float] | tuple[float, ...], image_size: int):
        super().__init__()
        self.model = model
        self.views = tuple(float(v) for v in views)
        self.image_size = image_size
        self.crops = [(image_size - c) // 2 for c in (round(image_size * v) for v in self.views)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = self.inputs(x)
        logits = self.model(torch.cat(batch))
        return torch.stack(logits.chunk(len(batch))).mean(0)

    def inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The views of a batch, each of the input's size."""
        side = self.image_size
        return [
            x if start == 0 else _resize(x[..., start : side - start, start : side - start], side)
            for start in self.crops
        ]


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    return nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


def with_test_views(
    model: nn.Module, views: list[float] | tuple[float, ...], image_size: int
) -> nn.Module:
    """``model`` answering with the mean over ``views`` (``TestViews``) of its ``image_size``
    input; the model itself for one whole view."""
    return model if list(views) in ([], [1.0]) else TestViews(model, views, image_size)


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
