"""`medtf.progress`: a redrawn bar on a terminal (a real pseudo-terminal), counted log lines elsewhere, silence
when quiet; and the commands that use it (conversion per case, prediction per sliding-window batch)."""

from __future__ import annotations

import io
import os
import re

import pytest

from medtf import progress as progress_lib
from medtf.progress import Progress, progress


def _read_all(fd: int) -> bytes:
    import select

    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("columns", [0, 100])  # a fresh pseudo-terminal reports 0 columns until sized
def test_bar_on_a_pseudo_terminal(columns):
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert progress_lib.is_interactive(tty)
            with progress(total=7, desc="convert demo", unit="case", file=tty) as bar:
                assert bar.mode == "bar"
                for _ in range(7):
                    bar.update()
            tty.flush()
            out = _read_all(master).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "\r" in out  # redrawn in place, not one line per update
    assert re.search(r"convert demo: 100%\|[^|]*\| 7/7", out), out
    assert "cases (" not in out  # no log lines on a terminal


@pytest.mark.parametrize("total, every, expected", [(20, None, 10), (7, None, 7), (95, None, 10), (10, 4, 3),
                                                    (3, None, 3)])
def test_lines_when_not_a_terminal(total, every, expected):
    stream = io.StringIO()
    with Progress(total, "evaluate test", "case", file=stream, every=every) as bar:
        for _ in range(total):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert bar.mode == "lines" and "\r" not in stream.getvalue()
    assert len(lines) == expected == bar.lines, lines
    assert lines[-1].startswith(f"evaluate test: {total}/{total} cases (100%)")
    assert all(re.match(rf"evaluate test: \d+/{total} cases \(\d+%\) [\d.]+s elapsed", line) for line in lines)


def test_last_line_when_stopped_early_and_unknown_total():
    stream = io.StringIO()
    with Progress(100, "verify", "shard", file=stream) as bar:
        for _ in range(15):  # stopped (e.g. --strict) between two 10% lines
            bar.update()
    assert stream.getvalue().splitlines()[-1].startswith("verify: 15/100 shards (15%)")
    stream = io.StringIO()
    list(progress(iter(range(25)), desc="read", unit="batch", file=stream, every=10))
    assert [line.split(",")[0] for line in stream.getvalue().splitlines()] == [
        "read: 10 batches", "read: 20 batches", "read: 25 batches"]


def test_quiet(monkeypatch):
    stream = io.StringIO()
    progress_lib.set_quiet(True)
    try:
        with Progress(10, "x", file=stream) as bar:
            bar.update(10)
        assert progress_lib.keras_verbose("auto") == 0
    finally:
        progress_lib.set_quiet(False)
    monkeypatch.setenv("MEDTF_QUIET", "1")
    with Progress(10, "x", file=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


def test_keras_verbose_follows_stdout(monkeypatch):
    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr("sys.stdout", Stream(True))
    assert progress_lib.keras_verbose("auto") == 1
    monkeypatch.setattr("sys.stdout", Stream(False))
    assert progress_lib.keras_verbose("auto") == 2 and progress_lib.keras_verbose(None) == 2
    assert progress_lib.keras_verbose(0) == 0 and progress_lib.keras_verbose("1") == 1
    with pytest.raises(ValueError, match="train.verbose"):
        progress_lib.keras_verbose("loud")


def test_conversion_prints_a_line_per_case(tmp_path, capsys):
    from medtf.synth.lgg_mri import generate_lgg_mri
    from tests.conftest import TEST_SALT, run_medtf

    generate_lgg_mri(tmp_path / "src", cases=4, seed=5, num_slices=3, size=16)
    assert run_medtf("convert", "lgg-mri", "--input", tmp_path / "src", "--output", tmp_path / "out",
                     "--split", "1,0,0", "--id-salt", TEST_SALT) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("convert lgg-mri: ")]
    assert [line.split(" (")[0] for line in lines] == [f"convert lgg-mri: {k}/4 cases" for k in range(1, 5)], err
    assert run_medtf("--quiet", "verify", tmp_path / "out") == 0
    assert "verify:" not in capsys.readouterr().err
    assert run_medtf("verify", tmp_path / "out") == 0
    assert re.search(r"^verify: 1/1 shard \(100%\)", capsys.readouterr().err, re.M)
