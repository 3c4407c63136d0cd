"""The preemption notice (SIGUSR1) of a tuning process, as a flag the search checks between and during trials.

SLURM sends USR1 ``--signal=B:USR1@SECONDS`` before the time limit; slurm/tune.sbatch forwards it to the workers
(through srun) and, once they are gone, to the chief. What each side does with it:

* a worker inside a trial: the run's `medtf.hpc.preemption.PreemptionCallback` saves the trial's backup at the
  end of the current batch and stops; the worker then leaves the trial unfinished (it does not end it, so the
  oracle keeps it in ``ongoing_trials``) and exits 0. If the signal lands while the trial is still being set up
  (before ``fit`` installs the callback's handler), `resend_while_running` repeats it until the callback has it.
* a worker between trials (or waiting on IDLE): it asks for no new trial and exits 0.
* the chief: it stops serving, saves the oracle (ongoing trials included) and `medtf tune` exits `EXIT_PREEMPTED`.

On the next start the chief reloads the oracle; keras-tuner's ``Oracle.reload`` puts every ongoing trial in its
retry queue and ``create_trial`` hands it out again under the same trial id (``run_times`` is only counted by
``end_trial``), so the trial resumes from ``TUNE_DIR/trials/<id>/backup`` and the budget is unchanged.

Example:
    >>> with STOP.armed():                      # doctest: +SKIP
    ...     while not STOP.requested: work()
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" -- the job script requeues on it


class StopRequest:
    """A process-wide "save and stop" flag set by a signal (default SIGUSR1) while armed.

    Args:
        signals: the signal numbers that mean "stop".

    ``armed()`` nests: only the outermost one installs the handler (clearing the flag) and restores the
    previous one, so `medtf tune`'s CLI can arm it before the slow imports and `tune` again inside.
    """

    def __init__(self, signals=(signal.SIGUSR1,)):
        self.signals = tuple(signals)
        self.requested = False
        self._depth = 0
        self._previous: dict = {}

    def _on_signal(self, signum, frame):
        self.requested = True  # only a flag: the search stops at its next check

    def request(self) -> None:
        """What the signal does (tests, other notifiers)."""
        self.requested = True

    @contextlib.contextmanager
    def armed(self):
        outermost = self._depth == 0 and threading.current_thread() is threading.main_thread()
        if outermost:
            self.requested = False
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if outermost:
                for sig, handler in self._previous.items():
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
                self._previous = {}

    @contextlib.contextmanager
    def resend_while_running(self, period: float = 0.5):
        """While the block runs, re-send the signal to this process every ``period`` s once the flag is set.

        A trial's training installs its own handler (PreemptionCallback) only when ``fit`` starts; a signal that
        arrives before sets this flag instead, and the callback would never hear of it. Re-sending reaches
        whichever handler is installed: the callback (which saves and stops) or this one (which sets the flag).
        """
        done = threading.Event()

        def loop():
            while not done.wait(period):
                if self.requested and self._depth > 0:
                    for sig in self.signals[:1]:
                        os.kill(os.getpid(), sig)

        thread = threading.Thread(target=loop, name="medtf-stop-resend", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


STOP = StopRequest()
