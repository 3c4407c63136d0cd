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


MARKUP = ("``", ":func:", ":class:", ":meth:", ":mod:", ":attr:", ":ref:")


def _parsers():
    """``(argv, parser)`` of the top level and every (sub-)sub-command, from the real parser tree."""
    import argparse

    from medtf.cli.main import _build_parser

    found, todo = [], [([], _build_parser())]
    while todo:
        argv, parser = todo.pop(0)
        found.append((argv, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((argv + [name], sub) for name, sub in action.choices.items())
    return found


def test_every_command_help_is_complete_and_clean(capsys):
    import argparse

    parsers = _parsers()
    names = {" ".join(argv) for argv, _ in parsers}
    assert {"inspect", "verify", "demo", "export", "predict", "slurm", "tune", "cv-report", "convert brachy-ct",
            "info"} <= names
    for argv, parser in parsers:
        what = f"medtf {' '.join(argv)}"
        with pytest.raises(SystemExit) as exit_info:
            run_medtf(*argv, "--help")
        assert exit_info.value.code == 0, what
        text = capsys.readouterr().out
        assert (parser.description or "").strip(), f"{what}: no description"
        assert not [m for m in MARKUP if m in text], f"{what}: markup in\n{text}"
        assert "(and, later, models)" not in text
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing = [c.dest for c in action._choices_actions if not (c.help or "").strip()]
                assert not missing, f"{what}: sub-commands without help: {missing}"
            elif not isinstance(action, argparse._HelpAction):
                assert (action.help or "").strip(), f"{what}: {action.option_strings or action.dest} has no help"
        assert "--quiet" in text and "--verbose" in text, what


@pytest.mark.parametrize("argv, expect", [
    (["slurm", "status"], "JOBID"), (["slurm", "run"], "-- COMMAND"), (["slurm", "convert"], "--num-tasks"),
    (["slurm", "experiments/lgg_unet2d.yaml"], "--submit"), (["slurm", "convert", "lgg-mri"], "--num-tasks"),
])
def test_slurm_targets_have_help(argv, expect, capsys):
    """`medtf slurm status --help` is help, not a job id (no scontrol is called)."""
    try:
        code = run_medtf(*argv, "--help")
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0 and expect in out, out
    assert out.startswith("usage: medtf slurm ") and not [m for m in MARKUP if m in out]
    description = out.split("\n\n")[1]
    assert description.strip() and not description.lstrip().startswith(("positional", "options")), out
