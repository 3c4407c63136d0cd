"""`medtf --help` and every subcommand's help must work and name what they do."""

import subprocess
import sys

import pytest

from tests.conftest import run_medtf


@pytest.mark.parametrize("argv, expect", [
    ([], ["synth", "convert", "inspect", "verify", "train", "evaluate", "export", "predict", "slurm", "tune",
          "cv-report", "demo"]),
    (["train"], ["--set", "--run-dir", "--folds"]),
    (["evaluate"], ["--split", "--checkpoint", "--overlap", "--data-dir"]),
    (["export"], ["--version", "--threshold", "SavedModel"]),
    (["predict"], ["--input", "--output", "DICOM SEG"]),
    (["cv-report"], ["RUN_DIR"]),
    (["synth"], ["brachy-ct", "lgg-mri", "--cases", "--seed"]),
    (["convert"], ["brachy-ct", "lgg-mri"]),
    (["convert", "brachy-ct"], ["--split", "--folds", "--shard-size-mb", "--compression", "--id-salt", "--workers",
                                "--strict", "--catheter-radius-mm", "--spacing", "--crop-margin-mm", "RT Plan",
                                "--num-tasks", "--task-index", "SLURM_ARRAY_TASK_ID", "--merge"]),
    (["convert", "lgg-mri"], ["kaggle_3m", "TCGA_", "--split"]),
    (["inspect"], ["folder"]),
    (["verify"], ["folder"]),
])
def test_help(argv, expect, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_medtf(*argv, "--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in expect:
        assert word in text, word


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "medtf.cli.main", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("medtf ")


def test_unknown_folder_gives_a_clear_error(tmp_path, capsys):
    assert run_medtf("verify", tmp_path) == 2
    assert "no manifest" in capsys.readouterr().err
    assert run_medtf("convert", "lgg-mri", "--input", tmp_path / "missing", "--output", tmp_path / "o") == 2
