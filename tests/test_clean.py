"""The cleaning round: which labels a round drops or changes, the refusals, the cleaned shards,
and the pipeline's clean stage end to end (round 2 beside round 1 in the report)."""

import json
from pathlib import Path

import numpy as np
import pytest

from logo_train.clean import (
    DROPPED,
    KEPT,
    RELABELLED,
    CleaningError,
    plan_cleaning,
    round_loss,
    write_cleaned_shards,
)
from logo_train.config import CleanConfig
from logo_train.data.shards import read_manifest, read_split
from logo_train.data.synth import generate

CLASSES = ["a", "b", "c"]
OLD_RULE = {"given_prob": 0.0, "threshold": 0.5, "disagree": True}
"""Trust below 0.5 or any disagreement (the study's 'relabel/any')."""


def _rows():
    """Seven rows: 0-1 trusted, 2 low trust and a confident other prediction, 3 low trust and an
    unsure prediction, 4 trusted but predicted as another class, 5-6 trusted."""
    given = np.array([0, 0, 1, 1, 2, 2, 1])
    trust = np.array([0.9, 0.8, 0.1, 0.2, 0.95, 0.99, 0.9])
    predicted = np.array([0, 0, 0, 2, 1, 2, 1])
    confidence = np.array([0.9, 0.9, 0.8, 0.3, 0.7, 0.9, 0.9])
    given_prob = np.array([0.9, 0.8, 0.05, 0.3, 0.2, 0.9, 0.9])
    return given, given_prob, trust, predicted, confidence, 1 - trust


def test_the_default_rule_acts_on_improbable_given_labels():
    given, gp, trust, predicted, conf, susp = _rows()
    plan = plan_cleaning(given, gp, trust, predicted, conf, susp, CleanConfig(mode="drop"), CLASSES)
    assert plan.action.tolist() == [KEPT, KEPT, DROPPED, KEPT, KEPT, KEPT, KEPT]
    assert plan.rule == "p(given label) < 0.1"


def test_drop_acts_on_low_trust_and_disagreement():
    given, gp, trust, predicted, conf, susp = _rows()
    cfg = CleanConfig(mode="drop", max_fraction=0.9, **OLD_RULE)
    plan = plan_cleaning(given, gp, trust, predicted, conf, susp, cfg, CLASSES)
    assert plan.action.tolist() == [KEPT, KEPT, DROPPED, DROPPED, DROPPED, KEPT, KEPT]
    assert plan.labels.tolist() == given.tolist()
    assert plan.counts_after == [2, 1, 1] and plan.dropped == 3
    only_trust = CleanConfig(mode="drop", given_prob=0.0, threshold=0.5, max_fraction=0.9)
    plan = plan_cleaning(given, gp, trust, predicted, conf, susp, only_trust, CLASSES)
    assert plan.action.tolist() == [KEPT, KEPT, DROPPED, DROPPED, KEPT, KEPT, KEPT]


def test_relabel_changes_confident_predictions_and_drops_the_rest():
    given, gp, trust, predicted, conf, susp = _rows()
    cfg = CleanConfig(mode="relabel", relabel_confidence=0.5, max_fraction=0.9, **OLD_RULE)
    plan = plan_cleaning(given, gp, trust, predicted, conf, susp, cfg, CLASSES)
    # row 2 -> class 0 (p 0.8), row 3 dropped (p 0.3), row 4 -> class 1 (p 0.7)
    assert plan.action.tolist() == [KEPT, KEPT, RELABELLED, DROPPED, RELABELLED, KEPT, KEPT]
    assert plan.labels.tolist() == [0, 0, 0, 1, 1, 2, 1]
    assert plan.counts_after == [3, 2, 1] and plan.relabelled == 2 and plan.dropped == 1


def test_fraction_takes_the_most_suspect_rows():
    given, gp, trust, predicted, conf, susp = _rows()
    cfg = CleanConfig(mode="drop", fraction=0.3, max_fraction=0.5)  # 2 of 7
    plan = plan_cleaning(given, gp, trust, predicted, conf, susp, cfg, CLASSES)
    assert np.flatnonzero(plan.action == DROPPED).tolist() == [2, 3]
    assert "2 most suspect" in plan.rule


def test_a_round_that_acts_on_too_much_stops_naming_the_field():
    given, gp, trust, predicted, conf, susp = _rows()
    with pytest.raises(CleaningError, match="train.clean.max_fraction"):
        plan_cleaning(
            given, gp, trust, predicted, conf, susp, CleanConfig(mode="drop", **OLD_RULE), CLASSES
        )


def test_a_round_that_would_empty_a_class_stops_and_thin_classes_are_reported():
    given, gp, trust, predicted, conf, susp = _rows()
    trust = trust.copy()
    trust[5] = 0.1  # class c's rows 4 (disagrees) and 5 (low trust) would both go
    cfg = CleanConfig(mode="drop", max_fraction=0.9, **OLD_RULE)
    with pytest.raises(CleaningError, match=r"\['c'\] without a training row"):
        plan_cleaning(given, gp, trust, predicted, conf, 1 - trust, cfg, CLASSES)
    given, gp, trust, predicted, conf, susp = _rows()
    plan = plan_cleaning(given, gp, trust, predicted, conf, susp, cfg, CLASSES, batch_size=2)
    assert plan.thin_classes == ["b", "c"]  # half their rows gone: reported, kept


def test_cleaned_shards_hold_what_the_plan_says(tmp_path, tiny_synth):
    src = str(tmp_path / "src")
    manifest = generate(tiny_synth, src, rows_per_shard=40, progress=False)
    table = read_split(src, "train", ["id", "label", "clean_label", "is_noisy"])
    ids = table["id"].to_pylist()
    given = np.asarray(table["label"].to_pylist())
    truth = np.asarray(table["clean_label"].to_pylist())
    noisy = np.asarray(table["is_noisy"].to_pylist(), bool)
    n, classes = len(ids), list(manifest.classes)
    # an oracle audit: every flipped label has trust 0 and the true class as its prediction
    trust = np.where(noisy, 0.0, 1.0)
    cfg = CleanConfig(mode="relabel", max_fraction=0.5)
    plan = plan_cleaning(given, trust, trust, truth, np.ones(n), 1 - trust, cfg, classes)
    # ids handed over in another order than the shards': matched by id
    order = np.random.default_rng(0).permutation(n)
    from logo_train.clean import CleanPlan

    shuffled = CleanPlan(
        plan.mode,
        plan.action[order],
        plan.labels[order],
        plan.suspected[order],
        plan.rule,
        plan.counts_before,
        plan.counts_after,
    )
    out = str(tmp_path / "clean")
    cleaned = write_cleaned_shards(src, out, [ids[i] for i in order], shuffled)
    assert cleaned.split_rows("train") == n and cleaned.noisy_counts["train"] == 0
    after = read_split(out, "train", ["id", "label", "clean_label", "is_noisy"])
    assert sorted(after["id"].to_pylist()) == sorted(ids)
    assert after["label"].to_pylist() == after["clean_label"].to_pylist()
    assert not any(after["is_noisy"].to_pylist())
    assert cleaned.counts["train"] == dict(zip(classes, plan.counts_after, strict=True))
    for split in ("val", "test"):
        assert read_split(out, split, ["id"]) == read_split(src, split, ["id"])
    assert read_manifest(out).params["cleaned_from"] == src
    # drop: the flipped rows are gone, the others unchanged
    only_drop = CleanConfig(mode="drop", max_fraction=0.5)
    drop = plan_cleaning(given, trust, trust, truth, np.ones(n), 1 - trust, only_drop, classes)
    out2 = str(tmp_path / "drop")
    cleaned = write_cleaned_shards(src, out2, ids, drop)
    assert cleaned.split_rows("train") == n - noisy.sum() == read_split(out2, "train").num_rows
    # an audit of other shards is refused
    with pytest.raises(ValueError, match="not in the audit"):
        write_cleaned_shards(src, str(tmp_path / "x"), [f"other-{i}" for i in ids], drop)


def test_auto_loss_keeps_the_robust_loss_only_where_the_round_found_many_wrong_labels():
    """loss 'auto': a round that acted on 1 row of 7 (14%) counts as noisy at noisy_fraction 0.1
    (round 2 keeps the backbone's loss) and as clean at 0.2 (ce_weighted); an empty or a set
    loss is used as it is."""
    given, gp, trust, predicted, conf, susp = _rows()
    plan = plan_cleaning(
        given, gp, trust, predicted, conf, susp, CleanConfig(mode="relabel"), CLASSES
    )
    assert int(plan.suspected.sum()) == 1
    noisy = CleanConfig(mode="relabel", loss="auto", noisy_fraction=0.1)
    loss, why = round_loss(noisy, "gce", plan)
    assert loss == "gce" and "14.3%" in why and "noisy_fraction 0.1" in why
    clean = CleanConfig(mode="relabel", loss="auto", noisy_fraction=0.2)
    loss, why = round_loss(clean, "gce", plan)
    assert loss == "ce_weighted" and "below" in why
    assert round_loss(CleanConfig(mode="relabel"), "gce", plan)[0] == "gce"
    assert round_loss(CleanConfig(mode="relabel", loss="ce"), "gce", plan)[0] == "ce"


def test_clean_config_checks_its_fields():
    from logo_train.config import load_config

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ValueError, match="train.clean.mode"):
        load_config(root / "configs/quick.yaml", ["train.clean.mode=wipe"])
    with pytest.raises(ValueError, match="train.clean.max_fraction"):
        load_config(root / "configs/quick.yaml", ["train.clean.max_fraction=1.5"])
    with pytest.raises(ValueError, match="train.clean.backbones"):
        load_config(root / "configs/quick.yaml", ["train.clean.backbones=[resnet18]"])
    with pytest.raises(ValueError, match="train.clean.noisy_fraction"):
        load_config(root / "configs/quick.yaml", ["train.clean.noisy_fraction=1"])
    with pytest.raises(ValueError, match="train.clean.loss"):
        load_config(root / "configs/quick.yaml", ["train.clean.loss=focal"])
    cfg = load_config(root / "configs/quick.yaml", ["train.clean.mode=drop"])
    assert cfg.train.clean.enabled and json.dumps(cfg.train.clean.backbones) == "[]"
    assert load_config(root / "configs/quick.yaml", ["train.clean.loss="]).train.clean.loss == ""
    with pytest.raises(ValueError, match="train.clean.epochs"):
        load_config(root / "configs/quick.yaml", ["train.clean.epochs=-1"])
    with pytest.raises(ValueError, match="train.clean.lr_scale"):
        load_config(root / "configs/quick.yaml", ["train.clean.lr_scale=0"])


def test_a_round_retrains_or_continues_from_the_last_checkpoint():
    """``train.clean.epochs`` 0: the backbone's recipe from its starting weights, with the
    round's loss; > 0: from the last round's checkpoint, that many epochs at lr_scale x its
    peak, with no search (a round's few epochs are fewer than ``tune.epochs``)."""
    from logo_train.clean import round_config
    from logo_train.config import load_config

    root = Path(__file__).resolve().parents[1]
    own = load_config(root / "configs/quick.yaml").for_backbone("efficientnet_lite0")
    again = round_config(own, own.train.clean, "ce_weighted", "runs/x/ckpt")
    assert (again.train.loss, again.train.start_from) == ("ce_weighted", "")
    assert (again.train.epochs, again.train.lr) == (own.train.epochs, own.train.lr)
    cc = CleanConfig(mode="relabel", epochs=1, lr_scale=0.5)
    on = round_config(own, cc, "gce", "runs/x/ckpt")
    assert (on.train.loss, on.train.start_from, on.train.epochs) == ("gce", "runs/x/ckpt", 1)
    assert on.train.lr == pytest.approx(own.train.lr * 0.5) and on.train.min_steps == 0
    assert on.train.trust_warmup_epochs == 0
    assert own.tune.enabled and own.tune.epochs > 1 and not on.tune.enabled


# The clean stage end to end (cleaned shards, round 2 trained and audited, the report of both
# rounds) runs in tests/test_resume.py, on a run whose driver is killed inside the round.


def test_a_round_that_would_act_on_no_label_is_not_trained():
    """Labels the audit finds clean: the round would train again on the same data, so it is
    refused as NothingToClean (the clean stage prints 'not trained' and records it)."""
    import pyarrow as pa

    from logo_train.clean import CleaningError, NothingToClean, _round_plan
    from logo_train.data.shards import Manifest

    n = 10
    ranked = pa.table(
        {
            "given_label": ["a", "b"] * (n // 2),
            "predicted_label": ["a", "b"] * (n // 2),
            "trust": [float("nan")] * n,
            "confidence": [0.99] * n,
            "loss": [0.01] * n,  # p(given label) = 0.99 everywhere
            "rank": list(range(1, n + 1)),
        }
    )
    manifest = Manifest("x", ["a", "b"], {"train": {"a": 5, "b": 5}}, {}, {}, False)
    with pytest.raises(NothingToClean, match="the audit acts on no label") as refused:
        _round_plan(ranked, manifest, CleanConfig(mode="relabel"), batch_size=4)
    assert isinstance(refused.value, CleaningError)
    # one improbable label: the round acts on it
    ranked = ranked.set_column(4, "loss", pa.array([5.0] + [0.01] * (n - 1)))
    plan = _round_plan(ranked, manifest, CleanConfig(mode="relabel"), batch_size=4)
    assert plan.dropped + plan.relabelled == 1
