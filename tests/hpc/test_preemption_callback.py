"""`PreemptionCallback`: SIGUSR1 -> backup saved at the end of the batch, training stops, the next fit resumes."""

from __future__ import annotations

import json
import os
import signal

import numpy as np


def _model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


class SignalAt:
    """Sends SIGUSR1 to this process at (epoch, batch), like `scancel --signal=USR1` would."""

    def __init__(self, epoch, batch):
        import keras

        class _Cb(keras.callbacks.Callback):
            def on_epoch_begin(cb, e, logs=None):
                cb.epoch = e

            def on_train_batch_begin(cb, b, logs=None):
                if (cb.epoch, b) == (epoch, batch):
                    os.kill(os.getpid(), signal.SIGUSR1)

        self.callback = _Cb()


def test_signal_saves_mid_epoch_and_resume_restarts_that_epoch(tmp_path):
    from medtf.hpc.preemption import PreemptionCallback

    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    backup = tmp_path / "backup"
    before = signal.getsignal(signal.SIGUSR1)

    model = _model()
    cb = PreemptionCallback(str(backup))
    seen = []
    import keras

    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))
    hist = model.fit(x, y, batch_size=4, epochs=5, verbose=0, shuffle=False,
                     callbacks=[SignalAt(2, 3).callback, cb, counter])
    # Stopped in the third epoch right after batch 3 (the one running when the signal came), not at its end.
    assert cb.preempted and cb.stopped_at == {"epoch": 2, "batch": 3}
    assert len(seen) == 10 + 10 + 4 and len(hist.history["loss"]) == 3
    meta = json.loads((backup / "training_metadata.json").read_text())
    assert meta == {"epoch": 2, "batch": 3}  # the next fit restarts epoch 2 (0-based)
    assert signal.getsignal(signal.SIGUSR1) == before  # handler restored after fit
    saved = [w.copy() for w in model.get_weights()]

    resumed = _model()  # a fresh process would build the same model from the config
    cb2 = PreemptionCallback(str(backup))
    first = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: first.append(e),
        on_train_begin=lambda logs: first.append([w.copy() for w in resumed.get_weights()]))
    hist2 = resumed.fit(x, y, batch_size=4, epochs=5, verbose=0, shuffle=False, callbacks=[cb2, probe])
    # The backup weights (after batch 3 of epoch 2) were loaded, and epochs 2, 3, 4 ran.
    for a, b in zip(first[0], saved):
        np.testing.assert_array_equal(a, b)
    assert first[1:] == [2, 3, 4] and len(hist2.history["loss"]) == 3
    assert not cb2.preempted and not backup.exists()  # a finished run deletes its backup


def test_a_late_signal_does_not_kill_a_finished_run(tmp_path):
    """After a finished fit, USR1 (a time-limit warning arriving late) is logged and ignored, not fatal: the job
    script would otherwise see exit >= 128 and requeue a finished run, which would retrain from scratch."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, numpy as np, keras
        from medtf.hpc.preemption import PreemptionCallback
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        x = np.zeros((8, 4), "float32")
        cb = PreemptionCallback({str(tmp_path / "backup")!r})
        model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[cb])
        assert not cb.preempted
        os.kill(os.getpid(), signal.SIGUSR1)
        print("still alive", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SIGUSR1 after training finished: ignored" in proc.stdout and "still alive" in proc.stdout


def test_without_signal_it_is_backup_and_restore(tmp_path):
    from medtf.hpc.preemption import PreemptionCallback

    x = np.ones((8, 4), "float32")
    model = _model()
    cb = PreemptionCallback(str(tmp_path / "b"))
    hist = model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, callbacks=[cb])
    assert not cb.preempted and cb.stopped_at is None and len(hist.history["loss"]) == 2
    assert not (tmp_path / "b").exists()
