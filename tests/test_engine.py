"""The one epoch loop (``engine.fit``) that a Ray Train worker, ``fit_local`` and the
Ray-overhead benchmark all run: what it takes from a stream, when it validates, what it
records. A tiny resnet10t on random tensors; no Ray."""

from pathlib import Path

import pytest
import torch

from logo_train import engine
from logo_train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4
BATCH = 8


def _training(
    loss: str = "ce_weighted", steps_per_epoch: int = 3, epochs: int = 3, more: tuple = ()
):
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        [
            f"train.loss={loss}",
            f"train.epochs={epochs}",
            f"train.batch_size={BATCH}",
            "train.trust_warmup_epochs=1",
            "model.image_size=32",
            *more,
        ],
    )
    torch.manual_seed(0)
    t = engine.build_training(
        cfg, "resnet10t", CLASSES, [10] * CLASSES, steps_per_epoch, torch.device("cpu")
    )
    return cfg, t


def _stream(n: int):
    """``n`` batches of random images, tagged so a test can see which were taken."""
    g = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.randn(BATCH, 3, 32, 32, generator=g),
            "label": torch.randint(0, CLASSES, (BATCH,), generator=g),
            "index": i,
        }
        for i in range(n)
    ]


def _prepare(taken: list[int]):
    def prepare(batch):
        taken.append(batch["index"])
        return batch["image"], batch["label"]

    return prepare


def _scripted(scores: list[float]):
    """A validation that returns the given macro-F1s in turn."""
    calls = iter(scores)

    def validate():
        return {"loss": 1.0, "macro_f1": next(calls), "accuracy": 0.5, "samples": 16}

    return validate


def test_a_shared_stream_gives_each_epoch_exactly_its_steps_and_an_early_end_is_named():
    _, t = _training(steps_per_epoch=3, epochs=2)
    stream, taken = iter(_stream(7)), []
    history = engine.fit(
        t,
        epochs=2,
        batches=lambda epoch: stream,
        prepare=_prepare(taken),
        validate=_scripted([0.1, 0.2]),
        trust_warmup_epochs=0,
        steps_per_epoch=3,
        tags={"backbone": "resnet10t"},
    )
    assert taken == [0, 1, 2, 3, 4, 5]  # the 7th batch is left for whoever reads on
    assert [h["steps"] for h in history] == [3, 3]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["backbone"] == "resnet10t" for h in history)
    assert next(stream)["index"] == 6

    _, t = _training(steps_per_epoch=3, epochs=3)
    short = iter(_stream(7))
    with pytest.raises(RuntimeError, match=r"resnet10t epoch 3: .* after 1 steps, expected 3"):
        engine.fit(
            t,
            epochs=3,
            batches=lambda epoch: short,
            prepare=_prepare([]),
            validate=_scripted([0.1, 0.2, 0.3]),
            trust_warmup_epochs=0,
            steps_per_epoch=3,
            tags={"backbone": "resnet10t"},
        )


def test_validation_every_n_epochs_and_at_the_last_with_the_running_best():
    _, t = _training(epochs=5)
    seen = []
    history = engine.fit(
        t,
        epochs=5,
        batches=lambda epoch: iter(_stream(2)),  # a DataLoader: a new iterator per epoch
        prepare=_prepare([]),
        validate=_scripted([0.3, 0.2, 0.4]),
        trust_warmup_epochs=0,
        validate_every=2,
        on_epoch_end=lambda record, improved: seen.append((record["epoch"], improved)),
    )
    validated = [h["epoch"] for h in history if "val_macro_f1" in h]
    assert validated == [2, 4, 5]
    assert [h["val_macro_f1"] for h in history if "val_macro_f1" in h] == [0.3, 0.2, 0.4]
    assert [h["best_val_macro_f1"] for h in history if "val_macro_f1" in h] == [0.3, 0.3, 0.4]
    assert seen == [(1, False), (2, True), (3, False), (4, False), (5, True)]
    assert [h["steps"] for h in history] == [2] * 5  # until the iterator ends
    assert all(h["train_images_per_s"] > 0 and 0 <= h["data_wait_fraction"] < 1 for h in history)
    assert all("train_mean_trust" not in h and "trust_active" not in h for h in history)


def test_early_stopping_counts_validations_without_a_new_best_and_says_so():
    records = [{"epoch": e + 1, "val_macro_f1": v} for e, v in enumerate([0.3, 0.5, 0.5, 0.49])]
    assert not engine.stops_early(records, patience=0)  # off
    assert not engine.stops_early(records[:2], patience=2)  # too few validations
    assert engine.stops_early(records, patience=2)  # 0.5 and 0.49 do not beat 0.5
    assert not engine.stops_early(records, patience=3)  # 0.5 beat 0.3
    assert engine.stops_early(records, patience=3, min_delta=0.25)  # +0.2 is not enough
    assert not engine.stops_early(records + [{"epoch": 5}], patience=3)  # unvalidated: no vote

    _, t = _training(epochs=8)
    seen = []
    history = engine.fit(
        t,
        epochs=8,
        batches=lambda epoch: iter(_stream(2)),
        prepare=_prepare([]),
        validate=_scripted([0.2, 0.4, 0.4, 0.3, 0.9, 0.9, 0.9, 0.9]),
        trust_warmup_epochs=0,
        patience=2,
        on_epoch_end=lambda record, improved: seen.append(record["epoch"]),
    )
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] == seen  # 0.9 at epoch 5 never seen
    assert history[-1]["stopped_early"] is True
    assert history[-1]["best_val_macro_f1"] == 0.4
    assert not any(h.get("stopped_early") for h in history[:-1])

    # a resumed run whose history had stopped trains no further epoch
    _, t = _training(epochs=8)
    again = engine.fit(
        t,
        epochs=8,
        batches=lambda epoch: iter(_stream(2)),
        prepare=_prepare([]),
        validate=_scripted([]),
        trust_warmup_epochs=0,
        start_epoch=4,
        best=0.4,
        history=list(history),
        patience=2,
    )
    assert [h["epoch"] for h in again] == [1, 2, 3, 4]

    # the last epoch is not "stopped early", and patience off trains every epoch
    _, t = _training(epochs=3)
    plain = engine.fit(
        t,
        epochs=3,
        batches=lambda epoch: iter(_stream(2)),
        prepare=_prepare([]),
        validate=_scripted([0.5, 0.4, 0.3]),
        trust_warmup_epochs=0,
        patience=2,
    )
    assert [h["epoch"] for h in plain] == [1, 2, 3]
    assert not any(h.get("stopped_early") for h in plain)


def test_trust_records_and_a_resumed_history_goes_on():
    _, t = _training(loss="trust_penalty", epochs=3)
    earlier = [{"epoch": 1, "val_macro_f1": 0.5, "best_val_macro_f1": 0.5}]
    history = engine.fit(
        t,
        epochs=3,
        batches=lambda epoch: iter(_stream(2)),
        prepare=_prepare([]),
        validate=_scripted([0.4, 0.6]),
        trust_warmup_epochs=2,
        start_epoch=1,
        best=0.5,
        history=earlier,
    )
    assert history is earlier
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["best_val_macro_f1"] for h in history] == [0.5, 0.5, 0.6]
    assert [h["trust_active"] for h in history[1:]] == [0.0, 1.0]  # warm-up: epochs 1-2
    assert all(0 < h["train_mean_trust"] < 1 for h in history[1:])
    # the logged loss is the weighted CE; the objective (with the trust terms) is its own
    assert all(h["train_objective"] != h["train_loss"] for h in history[1:])


def test_gce_logs_weighted_ce_and_its_own_objective_after_the_warm_up():
    _, t = _training(loss="gce", epochs=2)
    history = engine.fit(
        t,
        epochs=2,
        batches=lambda epoch: iter(_stream(2)),
        prepare=_prepare([]),
        validate=_scripted([0.1, 0.2]),
        trust_warmup_epochs=1,
    )
    warm, active = history
    assert warm["train_objective"] == pytest.approx(warm["train_loss"])  # weighted CE first
    assert active["train_objective"] < active["train_loss"]  # bounded: below the CE it logs
    assert "train_mean_trust" not in active


def test_training_starts_from_a_checkpoints_weights_and_names_a_bad_one(tmp_path):
    """``train.start_from`` (the cleaning round's continuation): the model begins as the
    checkpoint's, not from ``model.pretrained``; a missing or foreign checkpoint is an error
    naming the field."""
    from logo_train import checkpoint as ckpt
    from logo_train.models import build_model, normalisation

    torch.manual_seed(3)
    saved = build_model("resnet10t", CLASSES, 32)
    torch.nn.init.normal_(saved.get_classifier().weight, std=0.5)
    mean, std = normalisation(saved)
    info = ckpt.ModelInfo("resnet10t", CLASSES, 32, mean, std, [str(i) for i in range(CLASSES)])
    ckpt.save(tmp_path / "ckpt", info=info, model=saved, epoch=1, best_metric=0.0, history=[])
    cfg, _ = _training()

    def build(start_from: str, classes: int = CLASSES):
        own = cfg.with_train(start_from=start_from)
        cpu = torch.device("cpu")
        return engine.build_training(own, "resnet10t", classes, [10] * classes, 3, cpu)

    started = engine.classifier(build(str(tmp_path / "ckpt")).model)
    for key, value in saved.state_dict().items():
        assert torch.equal(started.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match=r"train\.start_from"):
        build(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"train\.start_from.*not this model's weights"):
        build(str(tmp_path / "ckpt"), classes=CLASSES + 1)


def test_grad_clip_bounds_each_step_and_a_negative_norm_is_refused():
    """``train.grad_clip``: the step is taken with the gradients scaled to that global norm
    when they are larger. With plain SGD (no decay) the first step is proportional to the
    gradient, so twice the norm gives twice the step, and no clip a much larger one."""
    batch = _stream(1)[0]
    moved = {}
    for clip in (0.0, 1e-3, 2e-3):
        more = ("train.optimizer=sgd", "train.weight_decay=0", f"train.grad_clip={clip}")
        _, t = _training(more=more)
        before = [p.detach().clone() for p in t.model.parameters()]
        engine.train_step(t, batch["image"], batch["label"], trust_active=False)
        step = sum(
            ((p.detach() - b) ** 2).sum() for p, b in zip(t.model.parameters(), before, strict=True)
        )
        moved[clip] = float(step) ** 0.5
    assert moved[2e-3] == pytest.approx(2 * moved[1e-3], rel=1e-3)
    assert moved[0.0] > 20 * moved[2e-3]  # unclipped: the raw gradient's step
    with pytest.raises(ValueError, match=r"train\.grad_clip"):
        _training(more=("train.grad_clip=-1",))


def _peak_lrs(loss: str, decay: float) -> tuple[float, dict[str, float]]:
    """``train.lr`` and each trainable parameter's learning rate at OneCycle's peak."""
    cfg, t = _training(loss, 10, 10, (f"train.layer_decay={decay}",))
    for _ in range(round(cfg.train.warmup_fraction * t.total_steps) - 1):  # OneCycle's peak
        t.optimizer.step()  # no gradients: nothing moves; only the schedule advances
        t.scheduler.step()
    lr_of = {id(p): g["lr"] for g in t.optimizer.param_groups for p in g["params"]}
    named = engine.unwrap(t.model).named_parameters()
    return cfg.train.lr, {n: lr_of[id(p)] for n, p in named if p.requires_grad}


def test_layer_decay_gives_lower_layers_lower_peaks_and_the_head_the_full_rate():
    """``train.layer_decay``: OneCycle's peak per parameter is ``train.lr`` times its layer's
    scale: the full rate for the classifier, lower layer by layer down to the stem; every
    parameter is in one group; the trust head trains at the full rate; 1 gives one rate;
    out of (0, 1] is refused."""
    lr, flat = _peak_lrs("ce_weighted", 1.0)
    assert all(v == pytest.approx(lr, rel=1e-3) for v in flat.values())
    _, decayed = _peak_lrs("ce_weighted", 0.5)
    assert decayed.keys() == flat.keys()
    assert decayed["fc.weight"] == pytest.approx(lr, rel=1e-3)
    assert decayed["conv1.0.weight"] < decayed["layer4.0.conv1.weight"] < lr / 1.9
    assert len({round(v, 9) for v in decayed.values()}) >= 4  # several layers, several rates
    _, trust = _peak_lrs("trust_penalty", 0.5)
    head = [v for n, v in trust.items() if n.startswith("trust_head")]
    assert head and all(v == pytest.approx(lr, rel=1e-3) for v in head)
    assert trust["backbone.conv1.0.weight"] == pytest.approx(decayed["conv1.0.weight"])
    with pytest.raises(ValueError, match=r"train\.layer_decay"):
        _training(more=("train.layer_decay=0",))


def test_cpu_precision_bfloat16_runs_the_forward_in_bfloat16_and_keeps_float32_weights():
    """``train.cpu_precision``: bfloat16 puts a CPU step's forward under autocast (its loss
    then differs from float32's by rounding only); the weights, their gradients and the loss
    stay float32, and float32 leaves autocast off."""
    losses = {}
    for precision in ("float32", "bfloat16"):
        _, t = _training(more=(f"train.cpu_precision={precision}",))
        assert t.use_amp == (precision == "bfloat16")
        for batch in _stream(3):  # the classifier starts at zero: the first loss is log(4)
            out = engine.train_step(t, batch["image"], batch["label"], trust_active=False)
        assert out["loss"].dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in t.model.parameters())
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in t.model.parameters())
        losses[precision] = float(out["loss"])
    assert losses["bfloat16"] != losses["float32"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)
