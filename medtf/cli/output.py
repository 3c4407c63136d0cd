"""What the ``medtf`` command prints besides its results: global flags, clean help texts, no start-up noise.

- ``--quiet`` (anywhere before a ``--``): no progress bars or progress lines (`medtf.progress`).
- ``--verbose``: TensorFlow's C++ start-up and log lines are shown as TensorFlow prints them.
- Otherwise the start-up lines TensorFlow prints on every command (``Could not find cuda drivers``, ``oneDNN
  custom operations are on``, ``cpu_feature_guard``, ``failed call to cuInit`` ...) are dropped from stderr.
  They come from absl before it is initialised, which ignores ``TF_CPP_MIN_LOG_LEVEL``, so `filtered_stderr`
  routes file descriptor 2 through a pipe and forwards every other byte unchanged (Python tracebacks, warnings,
  C++ errors, progress bars). ``TF_CPP_MIN_LOG_LEVEL`` itself defaults to 2 (`medtf.runtime.configure`).
- Help texts come from module docstrings written in reStructuredText; `clean_help_texts` removes the markup.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
import threading
import uuid

# Lines TensorFlow/absl/XLA print at start-up on machines without (working) CUDA; matched per line.
NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:.]+ +\d+ \S+\] (oneDNN custom operations are on|Could not find cuda drivers"
    rb"|This TensorFlow binary is optimized|failed call to cuInit|Unable to register cu\w+ factory"
    rb"|computation placer already registered|TF-TRT Warning|successful NUMA node read)"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)")


def global_flags(argv) -> dict:
    """``{"quiet", "verbose"}`` from the command line (before a ``--``, after which a wrapped command starts)."""
    argv = list(argv)
    own = argv[: argv.index("--")] if "--" in argv else argv
    return {"quiet": "--quiet" in own, "verbose": "--verbose" in own}


def add_global_flags(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` / ``--verbose`` on ``parser`` and on every (sub-)sub-command, so they go anywhere.

    ``default=SUPPRESS``: a sub-command that was not given the flag does not reset the top-level one; the values
    are read from the command line by `global_flags` in any case. A parser that has its own ``--quiet`` (``medtf
    tune``: no keras-tuner tables) keeps it: it also silences progress there.
    """
    seen = set()

    def add(p):
        if id(p) in seen:
            return
        seen.add(id(p))
        options = p._option_string_actions
        if "--quiet" not in options:
            p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="no progress bars or progress lines")
        if "--verbose" not in options:
            p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="show TensorFlow's start-up and C++ log lines (hidden by default)")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    add(sub)

    add(parser)


_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc|ref|doc|envvar|option|program):`~?([^`]+)`")


def clean_text(text: str | None) -> str | None:
    """reStructuredText markup -> plain text: ````x```` -> ``x``, ``:func:`a.b``` -> ``a.b``, ``::`` -> ``:``.

    Example:
        >>> clean_text("Writes ``medtf.json`` (see :func:`~medtf.export.export_run`)::")
        'Writes medtf.json (see export_run):'
    """
    if not text:
        return text
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), text)
    text = re.sub(r"``([^`]+?)``", r"\1", text)
    return re.sub(r"(\S)::(\s*$)", r"\1:\2", text, flags=re.M)


def clean_help_texts(parser: argparse.ArgumentParser) -> None:
    """`clean_text` on the description, epilog and every argument/sub-command help of ``parser`` and below."""
    seen = set()

    def clean(p):
        if id(p) in seen:
            return
        seen.add(id(p))
        p.description, p.epilog = clean_text(p.description), clean_text(p.epilog)
        for action in p._actions:
            if isinstance(action.help, str):
                action.help = clean_text(action.help)
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    choice.help = clean_text(choice.help)
                for sub in action.choices.values():
                    clean(sub)

    clean(parser)


class _StderrFilter:
    """File descriptor 2 -> pipe -> a thread that forwards everything but `NOISE` lines to the real stderr.

    Child processes (conversion workers) inherit the pipe, so their start-up lines are filtered too. Writes
    that end without a newline (progress bars redrawn with ``\\r``) are forwarded at once.
    """

    def __init__(self):
        sys.stderr.flush()
        self.target = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.read = read
        self.marker = f"\0medtf-stderr-sync-{uuid.uuid4().hex}\n".encode()
        self.synced = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="medtf-stderr-filter", daemon=True)
        self.thread.start()

    def _forward(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.target, data):]

    def _pump(self) -> None:
        pending = b""
        try:
            while True:
                chunk = os.read(self.read, 65536)
                if not chunk:
                    break
                pending += chunk
                if self.marker in pending:
                    pending = pending.replace(self.marker, b"")
                    self.synced.set()
                *lines, pending = pending.split(b"\n")
                self._forward(b"".join(line + b"\n" for line in lines if not NOISE.match(line)))
                if pending and not NOISE.match(pending) and not self.marker.startswith(pending):
                    self._forward(pending)  # a bar or prompt without a newline: now, not at the next line
                    pending = b""
            self._forward(pending)
        except OSError:
            pass
        finally:
            os.close(self.read)
            os.close(self.target)

    def stop(self) -> None:
        """Forward everything written so far, then give fd 2 back (children keep the pipe until they exit)."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.write(2, self.marker)
        self.synced.wait(timeout=5.0)
        os.dup2(self.target, 2)
        self.thread.join(timeout=0.2)  # ends now unless a child process still holds the pipe


@contextlib.contextmanager
def filtered_stderr(enabled: bool = True):
    """Drop TensorFlow start-up noise from fd 2 inside the block (see `_StderrFilter`)."""
    stderr_filter = None
    if enabled:
        try:
            stderr_filter = _StderrFilter()
        except OSError:  # no usable fd 2 (closed): nothing to filter
            stderr_filter = None
    try:
        yield
    finally:
        if stderr_filter is not None:
            stderr_filter.stop()


def with_global_flags(main):
    """Decorator of the ``medtf`` entry point: applies ``--quiet`` / ``--verbose`` and filters start-up noise."""

    @functools.wraps(main)
    def wrapper(argv=None):
        from medtf import progress, runtime

        args = sys.argv[1:] if argv is None else [str(a) for a in argv]
        flags = global_flags(args)
        if flags["quiet"]:
            progress.set_quiet(True)
        if flags["verbose"]:
            runtime.show_tensorflow_logs()
        try:
            with filtered_stderr(enabled=not flags["verbose"]):
                return main(argv)
        finally:
            if flags["quiet"]:
                progress.set_quiet(False)

    return wrapper
