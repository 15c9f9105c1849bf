"""The trust head and the trust-penalty loss: the formula, where gradients go, the limits
(large penalty = weighted CE), and that trust neither collapses nor saturates on noisy data."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F

from logo_train.backbones import BACKBONES
from logo_train.losses import build_loss, trust_penalty_loss
from logo_train.models import TrustHead, TrustModel, build_model, feature_tokens

SMALL = [n for n, s in BACKBONES.items() if s.size == "small"]


def _case(seed=0, n=12, c=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2
    target = torch.randint(0, c, (n,), generator=g)
    trust = torch.rand(n, generator=g) * 0.9 + 0.05
    weights = torch.rand(c, generator=g) + 0.5
    return logits, target, trust, weights


@pytest.mark.parametrize("normalise", [False, True])
def test_trust_penalty_loss_equals_the_formula(normalise):
    logits, target, trust, weights = _case()
    lam = 0.7
    ce = -torch.log_softmax(logits, 1)[torch.arange(len(target)), target]
    wce = weights[target] * ce
    s = wce.mean() if normalise else 1.0
    expected = (wce * trust).mean() + lam * s * (-torch.log(trust)).mean()
    out = trust_penalty_loss(
        logits, target, trust, weights=weights, penalty_weight=lam, normalise=normalise
    )
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.weighted_ce.item() == pytest.approx(wce.mean().item(), rel=1e-5)
    assert out.mean_trust.item() == pytest.approx(trust.mean().item(), rel=1e-6)
    # warm-up: the value adds the head's objective to plain weighted CE
    warm = trust_penalty_loss(
        logits,
        target,
        trust,
        weights=weights,
        penalty_weight=lam,
        normalise=normalise,
        active=False,
    )
    assert warm.loss.item() == pytest.approx((wce.mean() + expected).item(), rel=1e-5)


def test_rescaled_trust_keeps_the_batch_weight_and_trains_the_head_the_same():
    logits, target, trust, weights = _case(4)
    lam = 0.3
    ce = F.cross_entropy(logits, target, reduction="none")
    wce = weights[target] * ce
    plain = trust_penalty_loss(logits, target, trust, weights=weights, penalty_weight=lam)
    out = trust_penalty_loss(
        logits, target, trust, weights=weights, penalty_weight=lam, rescale=True
    )
    assert out.loss.item() == pytest.approx(
        ((wce * trust).mean() / trust.mean() + plain.penalty).item(), rel=1e-5
    )
    # a uniformly low trust does not slow the backbone: same gradient as weighted CE
    logits.requires_grad_(True)
    low = torch.full_like(trust, 0.05)
    out = trust_penalty_loss(logits, target, low, weights=weights, penalty_weight=lam, rescale=True)
    (g_low,) = torch.autograd.grad(out.loss, logits)
    (g_ref,) = torch.autograd.grad(
        (weights[target] * F.cross_entropy(logits, target, reduction="none")).mean(), logits
    )
    assert torch.allclose(g_low, g_ref, atol=1e-6)
    # ... while the head's gradient is the plain objective's
    grads = []
    for rescale in (False, True):
        t = trust.clone().requires_grad_(True)
        trust_penalty_loss(
            logits.detach(), target, t, weights=weights, penalty_weight=lam, rescale=rescale
        ).loss.backward()
        grads.append(t.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_warm_up_gives_the_backbone_plain_weighted_ce():
    logits, target, trust, weights = _case(1)
    logits.requires_grad_(True)
    trust_penalty_loss(
        logits, target, trust, weights=weights, penalty_weight=1.0, active=False
    ).loss.backward()
    warm_grad = logits.grad.clone()
    logits.grad = None
    (weights[target] * F.cross_entropy(logits, target, reduction="none")).mean().backward()
    assert torch.allclose(warm_grad, logits.grad, atol=1e-6)


def test_per_sample_optimum_is_the_soft_truncation():
    """Minimising over free trusts gives t = min(1, penalty * s / (w CE))."""
    logits, target, _, weights = _case(2, n=16)
    theta = torch.zeros(len(target), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    lam = 0.5
    for _ in range(3000):
        opt.zero_grad()
        trust_penalty_loss(
            logits,
            target,
            torch.sigmoid(theta),
            weights=weights,
            penalty_weight=lam,
            normalise=False,
        ).loss.backward()
        opt.step()
    wce = weights[target] * F.cross_entropy(logits, target, reduction="none")
    optimum = torch.clamp(lam / wce, max=1.0)
    trust = torch.sigmoid(theta).detach()
    inner = optimum < 0.95  # sigmoid reaches 1 only in the limit
    assert inner.sum() >= 3
    assert torch.allclose(trust[inner], optimum[inner], atol=0.02)
    assert (trust[~inner] > 0.9).all()


def test_large_penalty_trusts_everything_and_reduces_to_weighted_ce():
    logits, target, _, weights = _case(3)
    theta = torch.zeros(len(target), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        trust_penalty_loss(
            logits, target, torch.sigmoid(theta), weights=weights, penalty_weight=1000.0
        ).loss.backward()
        opt.step()
    trust = torch.sigmoid(theta).detach()
    assert trust.min() > 0.99
    # what trains the backbone is then weighted CE: same value (less the penalty), same gradient
    logits.requires_grad_(True)
    out = trust_penalty_loss(logits, target, trust, weights=weights, penalty_weight=1000.0)
    counts = [10, 8, 6, 4, 2]
    weighted = build_loss("ce_weighted", counts, 1.0)
    weighted.weights = weights
    reference = weighted(logits, target)
    assert (out.loss - out.penalty).item() == pytest.approx(reference.item(), rel=0.01)
    (g_trust,) = torch.autograd.grad(out.loss, logits)
    (g_ref,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(g_trust, g_ref, atol=0.01 * g_ref.abs().max().item())


def test_build_loss_trust_penalty_and_errors():
    loss = build_loss("trust_penalty", [4, 2], 1.0, penalty_weight=0.3)
    assert loss.needs_trust and loss.penalty_weight == 0.3
    assert loss.weights.tolist() == pytest.approx([2 / 3, 4 / 3])
    with pytest.raises(ValueError, match="penalty_weight"):
        build_loss("trust_penalty", [4, 2], 1.0, penalty_weight=0.0)
    with pytest.raises(ValueError, match="trust_penalty"):
        build_loss("focal", [4, 2], 1.0)
    logits, target, trust, _ = _case()
    with pytest.raises(ValueError, match="shape"):
        trust_penalty_loss(logits, target, trust[:3], penalty_weight=1.0)


def test_feature_tokens_read_every_layout():
    nchw = torch.randn(2, 8, 3, 4)
    assert feature_tokens(nchw, 8).shape == (2, 12, 8)
    assert torch.equal(feature_tokens(nchw, 8)[:, 5], nchw[:, :, 1, 1])
    nhwc = nchw.permute(0, 2, 3, 1)
    assert torch.equal(feature_tokens(nhwc, 8), feature_tokens(nchw, 8))
    assert feature_tokens(torch.randn(2, 7, 8), 8).shape == (2, 7, 8)
    with pytest.raises(ValueError, match="tokens"):
        feature_tokens(torch.randn(2, 7, 9), 8)


@pytest.mark.parametrize("name", SMALL)
def test_trust_model_on_every_family(name):
    """Same logits as the bare model; gradients reach the head and the backbone; the head reads
    detached features (the backbone's gradient is the trust-weighted CE's alone)."""
    torch.manual_seed(0)
    backbone = build_model(name, 6, 32)
    heads = backbone.get_classifier()
    for head in heads if isinstance(heads, tuple) else (heads,):
        nn.init.normal_(head.weight, std=0.1)  # not zero-init: real gradients everywhere
    model = TrustModel(backbone, 6, dim=16).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 5])
    with torch.no_grad():
        logits, trust = model(x, y)
        assert torch.allclose(logits, backbone(x), atol=1e-5)
        assert trust.shape == (4,) and ((trust > 0) & (trust < 1)).all()
        other = model(x, (y + 1) % 6)[1]
        assert not torch.allclose(trust, other)  # the trust depends on the given label

    model.train()  # (stochastic depth: same seed before each forward)
    torch.manual_seed(1)
    logits, trust = model(x, y)
    out = trust_penalty_loss(logits, y, trust, penalty_weight=1.0)
    out.loss.backward()
    head_grads = [p.grad for p in model.trust_head.parameters()]
    assert all(g is not None for g in head_grads)
    assert sum(g.abs().sum().item() for g in head_grads) > 0
    full = [p.grad.clone() for p in backbone.parameters() if p.grad is not None]
    model.zero_grad()
    torch.manual_seed(1)
    logits, trust = model(x, y)
    ce = F.cross_entropy(logits, y, reduction="none")
    scale = ce.mean().detach()
    ((ce * trust.detach()).mean() + scale * 0).backward()
    alone = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert len(full) == len(alone)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, alone, strict=True))


class _Mlp(nn.Module):
    """A backbone with timm's interface (forward_features / forward_head / num_features)."""

    def __init__(self, d_in, width, classes):
        super().__init__()
        self.num_features = width
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width))
        self.head = nn.Linear(width, classes)

    def forward_features(self, x):
        return torch.relu(self.body(x))[:, None, :]  # one token

    def forward_head(self, f):
        return self.head(f.mean(1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_trust_separates_flipped_labels_without_collapsing():
    """Blobs with 30% symmetric noise: after warm-up, clean samples keep high trust, flipped
    ones get low trust (AUROC > 0.9), and the batch never collapses to all-0 or all-1."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    classes, n = 4, 800
    centres = rng.normal(0, 3, (classes, 10))
    true = rng.integers(0, classes, n)
    x = torch.tensor(centres[true] + rng.normal(0, 1, (n, 10)), dtype=torch.float32)
    flipped = rng.random(n) < 0.3
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, classes, flipped.sum())) % classes
    y = torch.tensor(given)
    model = TrustModel(_Mlp(10, 32, classes), classes, dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mean_trusts = []
    for step in range(600):
        idx = torch.randint(0, n, (64,))
        logits, trust = model(x[idx], y[idx])
        out = trust_penalty_loss(logits, y[idx], trust, penalty_weight=1.0, active=step >= 100)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        mean_trusts.append(out.mean_trust.item())
    assert min(mean_trusts[100:]) > 0.3 and max(mean_trusts[100:]) < 0.99
    with torch.no_grad():
        _, trust = model(x, y)
    trust = trust.numpy()
    assert trust[~flipped].mean() > 0.7
    assert trust[flipped].mean() < trust[~flipped].mean() - 0.3
    assert roc_auc_score(flipped, 1 - trust) > 0.9
    assert not math.isnan(trust.sum())


def test_trust_head_starts_trusting():
    head = TrustHead(8, 3, dim=8)
    t = head(torch.randn(5, 4, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert ((t > 0.8) & (t < 0.95)).all()
