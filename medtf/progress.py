"""Progress of long steps (conversion, verify, evaluation, prediction): a bar on a terminal, log lines elsewhere.

One helper for every command, so they all behave alike:

- on a terminal (the stream is a TTY) a tqdm bar, redrawn in place;
- elsewhere (SLURM logs, pipes, CI) one line every ~10% of the total (or every ``every`` items) and at the end,
  e.g. ``predict patch batches: 40/108 (37%) 12.1s elapsed, ~20.5s left``, so a log shows that work goes on
  without thousands of carriage-return redraws;
- nothing with ``quiet=True``, after `set_quiet(True)` (``medtf --quiet``) or with ``MEDTF_QUIET=1``.

Example:
    >>> with progress(total=len(cases), desc="evaluate", unit="case") as bar:
    ...     for case in cases:
    ...         run(case)
    ...         bar.update()
    >>> for batch in progress(batches, desc="predict", unit="batch"):   # wraps an iterable
    ...     ...
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import IO, Iterable, Iterator

QUIET_ENV = "MEDTF_QUIET"
_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Turn every progress display of this process off (``medtf --quiet``) or back on."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet or os.environ.get(QUIET_ENV, "") not in ("", "0")


def is_interactive(stream: IO | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or a file-like object without isatty
        return False


def _plural(unit: str, n: int) -> str:
    if n == 1:
        return unit
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """Progress over ``total`` items (see the module docstring); also a context manager and an iterable wrapper.

    Args:
        total: number of items (None: unknown; lines then show the count only).
        desc: what is counted, printed first (``"convert brachy-ct"``).
        unit: item name (``"case"``, ``"patch batch"``).
        file: stream (default ``sys.stderr``).
        quiet: force silence (default: `is_quiet`).
        every: log-line interval in items when not on a terminal (default ~10% of ``total``).
        iterable: items to yield when iterated.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "item", *, file: IO | None = None,
                 quiet: bool | None = None, every: int | None = None, iterable: Iterable | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.file = sys.stderr if file is None else file
        self.iterable = iterable
        self.n = 0
        self.lines = 0  # log lines written (non-terminal mode)
        self._logged_at = 0
        self._start = time.monotonic()
        self._bar = None
        self._closed = False
        self.mode = "quiet" if (is_quiet() if quiet is None else quiet) else (
            "bar" if is_interactive(self.file) else "lines")
        if every is None:
            every = max(1, math.ceil(total / 10)) if total else 10
        self.every = max(1, int(every))
        self._next_line = self.every
        if self.mode == "bar":
            from tqdm import tqdm

            try:
                sized = os.get_terminal_size(self.file.fileno()).columns > 0
            except (AttributeError, OSError, ValueError):
                sized = False
            # A terminal that reports no size (a fresh pseudo-terminal, some CI runners) gets 80 columns.
            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.file, dynamic_ncols=sized,
                             ncols=None if sized else 80, leave=True, mininterval=0.2)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and (self.n >= self._next_line or (self.total and self.n >= self.total)):
            self._line()
            while self._next_line <= self.n:
                self._next_line += self.every

    def _line(self) -> None:
        elapsed = time.monotonic() - self._start
        if self.total:
            text = (f"{self.n}/{self.total} {_plural(self.unit, self.total)} ({100 * self.n // self.total}%) "
                    f"{_duration(elapsed)} elapsed")
            if 0 < self.n < self.total:
                text += f", ~{_duration(elapsed * (self.total - self.n) / self.n)} left"
        else:
            text = f"{self.n} {_plural(self.unit, self.n)}, {_duration(elapsed)} elapsed"
        print(f"{self.desc}: {text}" if self.desc else text, file=self.file, flush=True)
        self.lines += 1
        self._logged_at = self.n

    def close(self) -> None:
        """End the bar; in log-line mode a last line when the count stopped between two interval lines."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.n and self.n != self._logged_at:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("Progress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()


def keras_verbose(setting="auto") -> int:
    """``fit``'s ``verbose`` from ``train.verbose``: ``"auto"`` is a progress bar per step (1) when stdout is a
    terminal, one line per epoch (2) in logs and pipes, nothing (0) when quiet; 0, 1, 2 are kept."""
    if setting is None or str(setting).lower() == "auto":
        if is_quiet():
            return 0
        return 1 if is_interactive(sys.stdout) else 2  # Keras' Progbar writes to stdout
    if isinstance(setting, bool) or str(setting) not in ("0", "1", "2"):
        raise ValueError(f"train.verbose must be auto, 0, 1 or 2, got {setting!r}")
    return int(setting)


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "item",
             **kwargs) -> Progress:
    """A `Progress` (``total`` defaults to ``len(iterable)`` when it has one)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return Progress(total, desc, unit, iterable=iterable, **kwargs)
