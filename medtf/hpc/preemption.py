"""Stop cleanly when the scheduler says time is up: save a backup mid-epoch, keep it, and let the job requeue.

`PreemptionCallback` is `keras.callbacks.BackupAndRestore` (same folder, same files, same resume at the start of
``fit``) plus a signal handler. On SIGUSR1 (sent by SLURM ``--signal=B:USR1@SECONDS`` through the job script's
trap, or ``scancel --signal=USR1``) it sets a flag; at the end of the current batch it saves the backup, stops
training, and keeps the backup (BackupAndRestore deletes it when ``fit`` ends). The next ``fit`` on the same run
directory restarts the interrupted epoch from the weights of that batch, so at most the unfinished part of one
epoch is repeated. The job script (slurm/partials/requeue.sh) sees the backup and runs ``scontrol requeue``.

With several workers (MultiWorkerMirroredStrategy) every worker must stop at the same step, or the others hang
in the next all-reduce: the flag is then combined across workers every ``sync_every`` batches and all stop
together at the first check after any of them was signalled.
"""

from __future__ import annotations

import signal
import threading

import keras


def _late_signal(signum, frame):
    print(f"medtf: signal {signal.Signals(signum).name} after training finished: ignored (nothing left to save)",
          flush=True)


def _num_workers(strategy) -> int:
    extended = getattr(strategy, "extended", None)
    return int(getattr(extended, "_num_workers", 1) or 1)


class PreemptionCallback(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that also saves and stops on a signal (default SIGUSR1), keeping the backup to resume.

    Args:
        backup_dir: the BackupAndRestore folder (e.g. ``run_dir/backup``).
        signals: signal numbers that mean "save and stop" (installed for the duration of ``fit``; afterwards the
            previous handlers come back, except that a default (process-killing) disposition becomes "log and
            ignore" once a run has finished, so a late signal cannot turn a finished job into a requeued one).
        sync_every: with several workers, combine the flag across workers every this many batches.
        **kwargs: passed to `keras.callbacks.BackupAndRestore` (``save_freq``, ``double_checkpoint`` ...).

    After ``fit``, ``preempted`` tells whether it stopped on a signal and ``stopped_at`` gives
    ``{"epoch": e, "batch": b}`` (0-based; the epoch the next run restarts).

    Example:
        >>> cb = PreemptionCallback("runs/lgg/backup")                # doctest: +SKIP
        >>> model.fit(ds, epochs=50, callbacks=[cb])                   # doctest: +SKIP
        >>> if cb.preempted: print("requeue me")                       # doctest: +SKIP
    """

    def __init__(self, backup_dir, signals=(signal.SIGUSR1,), sync_every: int = 1, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.signals = tuple(signals)
        self.sync_every = max(1, int(sync_every))
        self.preempted = False
        self.stopped_at: dict | None = None
        self._signalled = False
        self._previous_handlers: dict = {}
        self._epoch = 0
        self._batches = 0

    # --- signal handling ---------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        # Only set a flag: saving from inside a signal handler could interrupt a half-written file.
        self._signalled = True

    def request_stop(self) -> None:
        """What the signal does, callable directly (tests, other notifiers)."""
        self._signalled = True

    def on_train_begin(self, logs=None):
        self.preempted, self.stopped_at, self._signalled, self._batches = False, None, False, 0
        if threading.current_thread() is threading.main_thread():  # signal.signal only works there
            for sig in self.signals:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        super().on_train_begin(logs)

    def _restore_handlers(self, finished: bool):
        for sig, handler in self._previous_handlers.items():
            if handler in (None, signal.SIG_DFL) and finished:
                # The default action kills the process: a time-limit warning between the end of a finished run and
                # the exit would make the job script (rc >= 128) requeue it and retrain from scratch.
                handler = _late_signal
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    # --- stopping ----------------------------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _should_stop(self) -> bool:
        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is None or _num_workers(strategy) <= 1:
            return self._signalled
        if self._batches % self.sync_every:
            return False
        import tensorflow as tf

        flag = tf.constant(1 if self._signalled else 0, tf.int32)
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None)
        return int(total) > 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.preempted:
            return
        if not self._should_stop():
            super().on_train_batch_end(batch, logs)
            return
        # `_current_epoch` is still the running epoch: the saved metadata makes the next fit restart it.
        self._current_epoch, self._last_batch_seen = self._epoch, batch
        self._save_model()
        self.preempted = True
        self.stopped_at = {"epoch": self._epoch, "batch": int(batch)}
        print(f"medtf: preempted at epoch {self._epoch + 1} batch {batch + 1}: backup saved in {self.backup_dir}; "
              f"run the same command again to resume", flush=True)
        self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if not self.preempted:  # the interrupted epoch is not complete: do not record it as done
            super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self._restore_handlers(finished=not self.preempted)
        if not self.preempted:  # a finished run deletes its backup; a preempted one keeps it to resume
            super().on_train_end(logs)
