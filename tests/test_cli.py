"""The command line as a user types it: commands, summaries, files, errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from logo_train.cli import main
from logo_train.data.shards import read_manifest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--image-size",
    "24",
    "--images-per-class",
    "8",
    "--imbalance-ratio",
    "2",
    "--val-per-class",
    "1",
    "--test-per-class",
    "1",
    "--no-progress",
]


def test_data_synth_writes_shards_summary_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["data", "synth", "--out", str(out), "--noise-rate", "0.25", *TINY]) == 0
    text = capsys.readouterr().out
    assert "classes: 28" in text and "label noise (train): 2" in text
    manifest = read_manifest(str(out))
    assert manifest.params["noise_rate"] == 0.25
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] > 300 and sheet.size[1] > 28 * 50
    # a second run into the same folder needs --overwrite
    assert main(["data", "synth", "--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(out), "--overwrite", *TINY]) == 0


def test_bad_flag_value_names_the_field(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--noise-rate", "2", *TINY]) == 2
    assert "data.synth.noise_rate" in capsys.readouterr().err


def test_data_ingest_and_show(tmp_path, capsys):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for name in ("Kia", "Tata"):
        (src / name).mkdir(parents=True)
        for i in range(5):
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(src / name / f"{i}.jpg")
    (src / "Kia" / "bad.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert (
        main(["data", "ingest", str(src), str(out), "--val-fraction", "0.2", "--no-progress"]) == 0
    )
    text = capsys.readouterr().out
    assert "files seen: 11   rows written: 10   rejected: 1" in text
    assert "Kia/bad.jpg: empty_file" in text
    assert (out / "contact_sheet.png").is_file()
    assert main(["data", "show", str(out)]) == 0
    assert "rejected by reason: empty_file: 1" in capsys.readouterr().out
    assert main(["data", "ingest", str(tmp_path / "nothing"), str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def _tiny_run(tmp_path, *sets: str) -> list[str]:
    """``--config quick.yaml --no-progress`` and ``--set`` for a few dozen images in tmp_path."""
    fields = [
        f"output_dir={tmp_path}",
        "data.synth.images_per_class=6",
        "data.synth.imbalance_ratio=2",
        "data.synth.val_per_class=1",
        "data.synth.test_per_class=1",
        *sets,
    ]
    return [
        "--config",
        str(ROOT / "configs/quick.yaml"),
        "--no-progress",
        *[a for f in fields for a in ("--set", f)],
    ]


def test_run_writes_config_and_reuses_data(tmp_path, capsys):
    args = ["run", "--stages", "data", *_tiny_run(tmp_path, "data.synth.image_size=24")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "[stage] data done in" in text
    assert (tmp_path / "quick" / "config.yaml").is_file()
    assert read_manifest(str(tmp_path / "quick" / "data")).params["images_per_class"] == 6
    assert main(args) == 0
    assert "reusing shards" in capsys.readouterr().out
    assert main([*args, "--set", "data.synth.seed=1"]) == 0  # other parameters: re-made
    assert read_manifest(str(tmp_path / "quick" / "data")).params["seed"] == 1


def test_ray_job_entrypoint_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray_jobs.data",
            "--config",
            "configs/quick.yaml",
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            "data.synth.images_per_class=4",
            "--set",
            "data.synth.imbalance_ratio=2",
            "--set",
            "data.synth.val_per_class=0",
            "--set",
            "data.synth.test_per_class=0",
            "--set",
            "data.synth.image_size=16",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "shards:" in proc.stdout
    assert read_manifest(str(tmp_path / "quick" / "data")).split_rows("val") == 0


def test_ci_runs_the_readme_test_command():
    """.ci/run must call the very command the README gives a new user for the tests."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    marker = "<!-- test-command -->"
    assert marker in readme
    block = readme.split(marker, 1)[1].split("```", 2)[1]
    command = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("sh")][0]
    assert command.strip() in ci


def test_loss_flag_selects_the_loss():
    from logo_train.cli import build_parser, config_from_args

    quick = str(ROOT / "configs/quick.yaml")

    for loss in ("ce", "ce_weighted", "trust_penalty"):
        args = build_parser().parse_args(["train", "--config", quick, "--loss", loss])
        assert config_from_args(args).train.loss == loss
    args = build_parser().parse_args(["run", "--loss", "ce", "--set", "train.loss=ce_weighted"])
    assert config_from_args(args).train.loss == "ce_weighted"  # --set wins, as documented
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--loss", "focal"])


def test_benchmark_refuses_a_run_folder_and_a_config_together(tmp_path, capsys):
    """A run folder is benchmarked with its own config.yaml; --config beside it was ignored."""
    (tmp_path / "config.yaml").write_text("name: x\n")
    code = main(["benchmark", str(tmp_path), "--config", "configs/quick.yaml"])
    assert code == 2
    assert "give RUN_DIR or --config, not both" in capsys.readouterr().err


def test_the_tune_job_shows_progress_only_when_asked():
    from ray_jobs.tune import parse

    assert parse([]).no_progress is True
    assert parse(["--progress"]).no_progress is False


def test_stages_without_data_use_the_shards_or_refuse_naming_the_field(tmp_path, capsys):
    common = _tiny_run(tmp_path)
    # no shards yet: the benchmark alone cannot invent them
    assert main(["run", "--stages", "benchmark,report", *common]) == 2
    assert "run the data stage first" in capsys.readouterr().err
    assert main(["run", "--stages", "data", *common]) == 0
    shards = sorted(p.name for p in (tmp_path / "quick/data").glob("*.parquet"))
    capsys.readouterr()
    # a synth parameter changed since: no silent re-render under old checkpoints
    changed = _tiny_run(tmp_path, "data.synth.noise_rate=0.4")
    assert main(["run", "--stages", "benchmark,report", *changed]) == 2
    err = capsys.readouterr().err
    assert "data.synth.noise_rate is 0.4 here, 0.2 in the shards" in err
    assert sorted(p.name for p in (tmp_path / "quick/data").glob("*.parquet")) == shards
    assert read_manifest(str(tmp_path / "quick/data")).params["noise_rate"] == 0.2


def test_every_command_and_flag_the_readme_names_exists():
    """Each ``logo-train <command> ... --flag`` in README.md is a real subcommand and a real
    flag of it: the README cannot drift from the CLI."""
    import argparse
    import re

    from logo_train.cli import build_parser

    def subparsers(parser):
        return next(
            (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {}
        )

    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")
    found = re.findall(r"logo-train((?: [a-z][\w-]*)+)([^`\n]*)", readme)
    assert len(found) >= 8, found
    for words, rest in found:
        parser, path = build_parser(), []
        for word in words.split():
            commands = subparsers(parser)
            if word not in commands:
                break
            parser, path = commands[word], [*path, word]
        assert path, f"README names 'logo-train{words}': no such command"
        flags = {s for a in parser._actions for s in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest):
            assert flag in flags, f"README: 'logo-train {' '.join(path)} {flag}' is not a flag"
