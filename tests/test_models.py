"""The backbone registry: every family builds, runs forward/backward, and has the right size."""

import pytest
import torch

from logo_train.backbones import BACKBONES, REFERENCE_FAMILIES, get_spec
from logo_train.models import (
    SameConv2d,
    build_model,
    count_parameters,
    freeze_leading,
    frozen_in_bfloat16,
    normalisation,
    with_test_views,
)

# The reference backbones with 28 classes (EfficientFormer without distillation head;
# docs/training.md, "Backbones")
REFERENCE_PARAMS = {
    "resnet50": 23_565_404,
    "mobilenetv2_100": 2_259_740,
    "swin_tiny_patch4_window7_224": 27_540_886,
    "efficientformer_l1": 11_404_500,
    "efficientnetv2_s": 20_213_356,
}
SMALL = [n for n, s in BACKBONES.items() if s.size == "small" and s.family in REFERENCE_FAMILIES]


def test_one_small_member_per_reference_family():
    full = {BACKBONES[n].family for n in REFERENCE_PARAMS}
    assert full == {BACKBONES[n].family for n in SMALL}
    assert len(SMALL) == len(REFERENCE_PARAMS) == 5


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_backbones_match_published_parameter_counts(name):
    model = build_model(name, 28, 224)
    assert count_parameters(model) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", SMALL + ["swin_tiny_patch4_window7_224", "efficientformer_l1"])
def test_forward_backward_at_quick_size(name):
    torch.manual_seed(0)
    model = build_model(name, 28, 64)
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([0, 5, 27, 3])
    logits = model(x)
    assert logits.shape == (4, 28)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", ["mobilenetv2_050", "efficientnetv2_nano", "mobilenetv2_100"])
def test_mobile_residual_blocks_start_as_the_identity(name):
    """Random init zeroes the last norm of every residual branch (timm does it for ResNets only):
    each block with a skip passes its input through unchanged until it learns."""
    torch.manual_seed(0)
    model = build_model(name, 28, 32).eval()
    blocks = [m for m in model.modules() if getattr(m, "has_skip", False)]
    blocks = [b for b in blocks if type(b).__name__ in ("InvertedResidual", "EdgeResidual")]
    assert len(blocks) >= 5
    for block in blocks:
        x = torch.randn(2, block.conv_pwl.out_channels, 8, 8)  # a skip: in == out channels
        assert torch.allclose(block(x), x)
    # and they can learn: the zeroed weights get gradients (once the zero-initialised
    # classifier has moved, as after the first step)
    torch.nn.init.normal_(model.get_classifier().weight, std=0.1)
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    zeroed = [getattr(b, "bn3", None) or b.bn2 for b in blocks]
    assert all(float(bn.weight.grad.abs().sum()) > 0 for bn in zeroed)


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet50") as err:
        get_spec("resnet5O")
    assert "unknown backbone 'resnet5O'" in str(err.value)


def test_sizes_a_family_cannot_take_name_the_field():
    with pytest.raises(ValueError, match=r"model\.image_size"):
        build_model("swin_nano", 28, 72)


def test_normalisation_comes_from_the_model():
    mean, std = normalisation(build_model("resnet10t", 28, 64))
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx(
        (0.229, 0.224, 0.225)
    )


def test_pretrained_file_loads_local_weights_and_skips_other_head(tmp_path):
    source = build_model("efficientformer_l1", 10, 224)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = build_model("efficientformer_l1", 28, 64, weights=str(path))
    assert torch.equal(model.stem.conv1.weight, source.stem.conv1.weight)
    assert model.head.out_features == 28
    # the 7x7 attention biases were resized to the 2x2 map of a 64 px input
    attn = model.stages[-1].blocks[-1].token_mixer
    assert attn.attention_biases.shape[1] == 4
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        build_model("resnet10t", 28, 64, weights=str(tmp_path / "missing.pth"))


def test_swin_nano_has_a_convolutional_stem_and_its_files_load(tmp_path):
    """swin_nano's patchify convolution is a conv stem of the same stride (3x3/2 convs, BN,
    ReLU, then 1x1); swin_tiny keeps timm's, so its ImageNet weights still fit."""
    torch.manual_seed(0)
    model = build_model("swin_nano", 28, 32)
    stem = model.patch_embed.proj
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in convs] == [
        (3, 2, 16),
        (3, 2, 32),
        (1, 1, 32),
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in stem) == 2
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 1, 1, 256)
    assert isinstance(
        build_model("swin_tiny_patch4_window7_224", 28, 64).patch_embed.proj, torch.nn.Conv2d
    )
    # a swin_nano weights file (a stem in its keys) loads exactly, timm's loader bypassed
    path = tmp_path / "nano.pth"
    torch.save(model.state_dict(), path)
    again = build_model("swin_nano", 28, 32, weights=str(path))
    assert torch.equal(again.patch_embed.proj[0].weight, stem[0].weight)


def test_test_views_answer_the_mean_of_the_whole_input_and_its_centre():
    torch.manual_seed(0)
    model = build_model("resnet10t", 5, 40).eval()
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)
    assert with_test_views(model, [1.0], 40) is model
    two = with_test_views(model, [1.0, 0.8], 40)
    x = torch.randn(3, 3, 40, 40)
    centre = torch.nn.functional.interpolate(
        x[..., 4:36, 4:36], size=(40, 40), mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        expected = (model(x) + model(centre)) / 2
        got = two(x)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, model(x).detach())  # the centre view changed the answer
    assert list(two.state_dict()) == [f"model.{k}" for k in model.state_dict()]


def test_the_registry_knows_which_backbones_timm_has_weights_for():
    """``BackboneSpec.hub`` (plain data, so a config validates without timm) agrees with timm."""
    import timm

    from logo_train.backbones import hub_problem

    for name, spec in BACKBONES.items():
        if not spec.kwargs:
            assert spec.hub == bool(timm.list_pretrained(f"{spec.timm_name}.*")), name
    assert "no pretrained weights" in hub_problem("efficientnetv2_s")
    assert "reduced" in hub_problem("swin_nano") and hub_problem("resnet50") == ""


def test_reading_a_config_and_the_cli_import_neither_torch_nor_timm():
    """``load_config`` and ``logo-train --help`` start in a fraction of a second: the registry
    is plain data (``logo_train.backbones``); torch and timm load when a model is built."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys; from logo_train.config import load_config; "
        "[load_config(f'configs/{p}.yaml') for p in ('quick', 'full', 'reference')]; "
        "from logo_train.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "size"),
    [(3, 2, 1, 56), (5, 2, 1, 28), (5, 2, 1, 7), (3, 2, 1, 57), (3, 1, 1, 14), (3, 2, 2, 20),
     (4, 3, 1, 16), (1, 2, 1, 9)],
)  # fmt: skip
def test_same_padding_in_the_convolution_equals_timms_padded_input(kernel, stride, dilation, size):
    from timm.layers.conv2d_same import Conv2dSame

    torch.manual_seed(0)
    timms = Conv2dSame(6, 6, kernel, stride=stride, dilation=dilation, groups=3, bias=True)
    ours = SameConv2d(6, 6, kernel, stride=stride, dilation=dilation, groups=3, bias=True)
    ours.load_state_dict(timms.state_dict())
    x = torch.randn(2, 6, size, size + 3)
    with torch.no_grad():
        expected, got = timms(x), ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_tf_models_use_the_unpadded_same_convolution_and_keep_their_keys():
    from timm.layers.conv2d_same import Conv2dSame

    model = build_model("efficientnet_lite0", 28, 112)
    same = [m for m in model.modules() if isinstance(m, SameConv2d)]
    assert len(same) == 5  # the stem and the four stride-2 depthwise convolutions
    assert not any(type(m) is Conv2dSame for m in model.modules())
    assert "conv_stem.weight" in model.state_dict()
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 28)


def test_frozen_stages_run_in_bfloat16_only_while_training():
    """``frozen_in_bfloat16``: in a training step the frozen stages compute in bfloat16 and
    hand float32 to the layers that learn, which still get gradients (the frozen ones none);
    in eval mode the model answers exactly as it did before (validation, export)."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 28, 64, weights="none")
    torch.nn.init.normal_(model.get_classifier().weight, std=0.1)  # not all-zero logits
    plain = build_model("efficientnet_lite0", 28, 64, weights="none")
    plain.load_state_dict(model.state_dict())
    frozen = freeze_leading(model, 4)
    frozen_in_bfloat16(model, frozen)
    x = torch.rand(4, 3, 64, 64)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))

    seen = {}
    first, trainable = frozen[0], model.blocks[3]
    first.register_forward_hook(lambda m, i, out: seen.update(frozen=out.dtype))
    trainable.register_forward_pre_hook(lambda m, i: seen.update(learning=i[0].dtype))
    model.train()
    for module in frozen:
        module.eval()
    logits = model(x)
    assert seen == {"frozen": torch.bfloat16, "learning": torch.float32}
    assert logits.dtype == torch.float32
    logits.sum().backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for p in trainable.parameters())
