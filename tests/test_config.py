from pathlib import Path

import pytest

from logo_train.config import (
    Config,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    parse_override,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", ["quick", "full", "reference"])
def test_profiles_load_and_round_trip(profile):
    cfg = load_config(ROOT / "configs" / f"{profile}.yaml")
    assert cfg.name == profile
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_profiles_set_every_field_explicitly():
    """configs/ must stay true to the code: a field missing from a profile is a stale profile."""
    import yaml

    defaults = config_to_dict(Config())

    def keys(tree, prefix=""):
        out = set()
        for k, v in tree.items():
            if isinstance(v, dict) and v and k not in ("pretrained", "space", "per_backbone"):
                out |= keys(v, f"{prefix}{k}.")
            else:
                out.add(prefix + k)
        return out

    for profile in ("quick", "full", "reference"):
        data = yaml.safe_load((ROOT / "configs" / f"{profile}.yaml").read_text())
        assert keys(data) == keys(defaults), profile


def test_overrides_are_yaml_typed_and_validated():
    cfg = load_config(None, ["data.synth.noise_rate=0.4", "data.synth.noise_kind=pairs"])
    assert cfg.data.synth.noise_rate == 0.4
    assert cfg.data.synth.noise_kind == "pairs"
    assert parse_override("data.synth.noisy_val=true") == ("data.synth.noisy_val", True)
    # an int is a valid float
    assert load_config(None, ["data.synth.imbalance_ratio=5"]).data.synth.imbalance_ratio == 5.0


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("data.synth.noise_rate=1.5", "data.synth.noise_rate"),
        ("data.synth.noise_kind=asym", "data.synth.noise_kind"),
        ("data.synth.image_size=big", "data.synth.image_size"),
        ("data.synth.imbalance_ratio=0.5", "data.synth.imbalance_ratio"),
        ("data.synth.max_crop_px=10", "data.synth.max_crop_px"),
        ("data.ingest.val_fraction=1.2", "data.ingest.val_fraction"),
        ("data.ingest.test_fraction=0.95", "data.ingest.test_fraction"),
        ("data.rows_per_shard=0", "data.rows_per_shard"),
        ("data.synth.noisy_val=3", "data.synth.noisy_val"),
        ("model.backbones=[resnet5O]", "model.backbones"),
        ("model.image_size=72", "model.image_size"),
        ("model.resize=squash", "model.resize"),
        ("train.lr=-0.1", "train.lr"),
        ("train.epochs=0", "train.epochs"),
        ("train.loss=focal", "train.loss"),
        ("train.gce_q=0", "train.gce_q"),
        ("train.batch_size=1", "train.batch_size"),
        ("train.class_weight_power=2", "train.class_weight_power"),
        ("model.pretrained={resnet5O: hub}", "model.pretrained"),
        ("model.pretrained={resnet50: package}", "model.pretrained.resnet50"),
        ("model.pretrained={efficientnetv2_s: hub}", "model.pretrained.efficientnetv2_s"),
        ("model.pretrained={swin_nano: hub}", "model.pretrained.swin_nano"),
        ("train.frozen_stages=-1", "train.frozen_stages"),
        ("train.frozen_precision=float16", "train.frozen_precision"),
        ("train.audit_precision=half", "train.audit_precision"),
        ("train.cpu_precision=fp16", "train.cpu_precision"),
        (
            "train.per_backbone={resnet10t: {cpu_precision: half}}",
            "train.per_backbone.resnet10t.cpu_precision",
        ),
        ("train.per_backbone={resnet10t: {lr: fast}}", "train.per_backbone.resnet10t.lr"),
        ("model.test_views=[1.0, 0.1]", "model.test_views"),
        ("model.test_views=[]", "model.test_views"),
        ("model.test_views=[1.0, 1.0]", "model.test_views"),
        (
            "train.per_backbone={swin_nano: {image_size: 48}}",
            "train.per_backbone.swin_nano.image_size",
        ),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"data\.synth\.nosie_rate"):
        load_config(None, ["data.synth.nosie_rate=0.1"])


def test_override_without_equals_is_an_error():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(None, ["data.synth.seed"])


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_dump_is_loadable(tmp_path):
    cfg = load_config(None, ["name=x", "data.synth.seed=5"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_recipe_per_backbone_applies_and_names_bad_fields():
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        ["train.per_backbone={swin_nano: {lr: 0.0005, epochs: 9}}", "train.epochs=4"],
    )
    swin = cfg.for_backbone("swin_nano")
    assert swin.train.lr == 0.0005 and swin.train.epochs == 9
    assert isinstance(swin.train.epochs, int)
    assert cfg.for_backbone("resnet10t").train.epochs == 4  # no recipe: the profile's
    with pytest.raises(ValueError, match=r"train\.per_backbone\.swin_nano\.num_workers"):
        load_config(
            ROOT / "configs/quick.yaml", ["train.per_backbone={swin_nano: {num_workers: 4}}"]
        )
    with pytest.raises(ValueError, match=r"train\.per_backbone\.nosuchnet"):
        load_config(ROOT / "configs/quick.yaml", ["train.per_backbone={nosuchnet: {lr: 0.1}}"])
    bad = load_config(ROOT / "configs/quick.yaml", ["train.per_backbone={swin_nano: {lr: -1}}"])
    with pytest.raises(ValueError, match=r"train\.per_backbone\.swin_nano: .*train\.lr"):
        bad.for_backbone("swin_nano")
    with pytest.raises(ValueError, match=r"train\.torch_threads"):
        load_config(ROOT / "configs/quick.yaml", ["train.torch_threads=-1"])


def test_per_backbone_recipe_sets_its_own_input_size_and_the_data_the_largest():
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        ["model.backbones=[resnet10t,efficientnet_lite0]", "tune.proxy_backbone="],
    )
    assert cfg.image_sizes() == {"resnet10t": 32, "efficientnet_lite0": 112}
    assert cfg.data.synth.image_size == 112  # 0 in the profile: the largest of the run
    lite = cfg.for_backbone("efficientnet_lite0")
    assert lite.model.image_size == 112 and lite.train.frozen_stages == 4
    assert cfg.for_backbone("resnet10t").model.image_size == 32
    # without the pretrained backbone the run renders at the families' 32 px
    small = load_config(ROOT / "configs/quick.yaml", ["model.backbones=[resnet10t]"])
    assert small.data.synth.image_size == 32


def test_min_steps_raises_the_epochs_of_a_small_training_split():
    from logo_train.data.shards import Manifest
    from logo_train.train import with_min_steps

    def manifest(rows: int) -> Manifest:
        return Manifest("x", ["a", "b"], {"train": {"a": rows // 2, "b": rows - rows // 2}},
                        {}, {}, has_truth=False)  # fmt: skip

    cfg = load_config(None, ["train.epochs=3", "train.min_steps=100", "train.batch_size=32",
                             "train.num_workers=1"])  # fmt: skip
    lines = []
    small = with_min_steps(cfg, "resnet10t", manifest(320), lines.append)  # 10 steps an epoch
    assert small.train.epochs == 10
    assert "10 steps an epoch on 320 training images: 10 epochs instead of 3" in lines[0]
    assert with_min_steps(cfg, "resnet10t", manifest(3200), lines.append) is cfg  # 300 steps
    assert len(lines) == 1


def test_with_train_coerces_numbers_validates_and_names_unknown_fields():
    cfg = Config()
    tuned = cfg.with_train(batch_size=31.6, lr=1, loss="ce")
    assert (tuned.train.batch_size, tuned.train.lr, tuned.train.loss) == (32, 1.0, "ce")
    assert isinstance(tuned.train.lr, float)
    assert cfg.with_train() == cfg  # a new config; the old one is not changed
    with pytest.raises(ValueError, match="'batch_sise' is not a train.\\* config field"):
        cfg.with_train(batch_sise=32)
    with pytest.raises(ValueError, match="train.epochs"):
        cfg.with_train(epochs=0)


def test_test_views_are_a_backbones_own():
    cfg = load_config(
        ROOT / "configs/quick.yaml",
        ["train.per_backbone.efficientnet_lite0.test_views=[1.0, 0.8]"],
    )
    assert cfg.for_backbone("efficientnet_lite0").model.test_views == [1.0, 0.8]
    assert cfg.for_backbone("efficientnet_lite0").model.image_size == 112  # the rest kept
    assert cfg.for_backbone("resnet10t").model.test_views == [1.0]
    bad = load_config(
        ROOT / "configs/quick.yaml", ["train.per_backbone={resnet10t: {test_views: [2.0]}}"]
    )
    with pytest.raises(ValueError, match=r"train\.per_backbone\.resnet10t: .*model\.test_views"):
        bad.for_backbone("resnet10t")


def test_the_search_s_limits_apply_only_when_it_runs():
    """``tune.*`` is checked against the training only when the search runs: a short training
    with the search off loads; with it on, the field that is too long is named."""
    short = ["train.epochs=2", "train.loss=trust_penalty", "train.trust_warmup_epochs=1"]
    cfg = load_config("configs/full.yaml", [*short, "tune.enabled=false"])
    assert cfg.train.epochs == 2 and cfg.tune.epochs > 2
    with pytest.raises(ValueError, match="'tune.epochs'"):
        load_config("configs/full.yaml", [*short, "tune.enabled=true"])
    searched = "tune.space={trust_warmup_epochs: {kind: int, low: 1, high: 3}}"
    cfg = load_config(None, [*short, "tune.epochs=2", searched, "tune.enabled=false"])
    assert cfg.tune.space["trust_warmup_epochs"].high == 3
    with pytest.raises(ValueError, match="'tune.space.trust_warmup_epochs'"):
        load_config(None, [*short, "tune.epochs=2", searched, "tune.enabled=true"])


def test_the_warm_up_check_reads_the_recipes_the_search_trains():
    """A long warm-up in a backbone the shared search never trains loads (and resolves); in the
    proxy's recipe, or in any backbone's with a search per backbone, it is refused."""
    quick = ROOT / "configs/quick.yaml"
    long_swin = "train.per_backbone.swin_nano.trust_warmup_epochs=7"
    cfg = load_config(quick, [long_swin])
    swin = cfg.for_backbone("swin_nano")
    assert swin.train.trust_warmup_epochs == 7 and swin.train.epochs == 8
    assert cfg.for_backbone("resnet10t").train.trust_warmup_epochs == cfg.train.trust_warmup_epochs
    with pytest.raises(ValueError, match="'tune.epochs'"):
        load_config(quick, ["train.per_backbone.efficientformer_nano.trust_warmup_epochs=2"])
    with pytest.raises(ValueError, match="'tune.epochs'"):
        load_config(quick, [long_swin, "tune.scope=per_backbone"])
