"""The stage table (``logo_train.stages``): the one list ``logo-train run``, ``resume`` and the
CLI read. Which stages a config runs, what each needs beside it, what each writes."""

from pathlib import Path

import pytest

from logo_train.config import load_config
from logo_train.stages import STAGES, TABLE, _resolve, check_stages, selected

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*overrides):
    return load_config(ROOT / "configs/quick.yaml", list(overrides))


def test_the_table_is_the_pipeline_in_order_and_every_entry_resolves():
    assert STAGES == ("data", "tune", "train", "audit", "clean", "benchmark", "report")
    for stage in TABLE:
        assert callable(_resolve(stage.body)) and callable(_resolve(stage.state)), stage.name
    cfg = _cfg()
    written = {s.name: s.writes(cfg.layout) for s in TABLE}
    assert written["train"] == [cfg.layout.train, cfg.layout.tensorboard]
    assert written["data"] == [] and written["clean"] == [cfg.layout.cleaning]


def test_a_config_switches_its_stages_and_a_stage_needs_what_it_reads():
    on = _cfg()
    assert [s.name for s in selected(on, STAGES)] == list(STAGES)
    off = _cfg("tune.enabled=false", "train.clean.mode=none", "benchmark.enabled=false")
    assert [s.name for s in selected(off, STAGES)] == ["data", "train", "audit"]
    assert [s.name for s in selected(off, ("data", "tune"))] == ["data", "tune"]  # logo-train tune
    with pytest.raises(ValueError, match="stage 'audit' needs stage 'train'"):
        check_stages(on, ("data", "audit"))
    with pytest.raises(ValueError, match="stage 'clean' needs stage 'audit'"):
        check_stages(on, ("train", "clean"))
    check_stages(off, ("train", "clean"))  # cleaning off: the clean stage does not run
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['trian'\]"):
        check_stages(on, ("trian",))


def test_the_cli_lists_the_table():
    from logo_train.cli import build_parser

    run = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    text = run.format_help().replace("\n", " ")
    for stage in TABLE:
        assert f"{stage.name}:" in text, stage.name
