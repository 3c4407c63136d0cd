"""Preemption of a search (SIGUSR1): the running trial keeps its backup and stays ongoing; the next start hands the
same trial id out again, resumes it from the backup and runs the rest of the budget (medtf/tuning/stop.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time

import yaml

from tests.conftest import history_epochs, run_medtf
from tests.tuning.conftest import tune_config




def test_stop_request_nests_and_restores_the_handler():
    from medtf.tuning.stop import StopRequest

    stop = StopRequest()
    before = signal.getsignal(signal.SIGUSR1)
    with stop.armed():
        assert signal.getsignal(signal.SIGUSR1) == stop._on_signal
        with stop.armed():  # nested: keeps the handler and the flag
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            assert stop.requested is True
        assert stop.requested is True and signal.getsignal(signal.SIGUSR1) == stop._on_signal
    assert signal.getsignal(signal.SIGUSR1) == before
    with stop.armed():  # a new outermost arming starts clear
        assert stop.requested is False


def test_a_signal_before_fit_reaches_the_handler_fit_installs_later():
    """USR1 while a trial is still being set up sets the flag; once the training's own handler replaces this one
    (PreemptionCallback.on_train_begin), the re-sent signal reaches it, so the trial still saves and stops."""
    from medtf.tuning.stop import StopRequest

    stop = StopRequest()
    got: list[int] = []
    with stop.armed(), stop.resend_while_running(period=0.05):
        os.kill(os.getpid(), signal.SIGUSR1)  # during the set-up: only the flag
        time.sleep(0.05)
        assert stop.requested and got == []
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))  # "fit" starts
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:
            time.sleep(0.01)
        signal.signal(signal.SIGUSR1, previous)  # "fit" ends and restores the search's handler
    assert got and got[0] == signal.SIGUSR1
    time.sleep(0.1)  # no resend after the block: the default action (terminate) would end this process
    assert signal.getsignal(signal.SIGUSR1) != stop._on_signal


def test_preempted_search_resumes_the_same_trial_from_its_backup(lgg_tiny, tmp_path):
    from medtf.tuning.stop import EXIT_PREEMPTED

    config = tune_config(lgg_tiny, max_trials=2, objective={"name": "val_loss", "direction": "min"})
    config["train"].update(epochs=3, steps_per_epoch=40)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    tune_dir = tmp_path / "tune"
    trial0 = tune_dir / "trials" / "0"
    seen: dict = {}

    def preempt_after_first_epoch():  # like SLURM's B:USR1, once trial 0 logged and backed up an epoch
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if history_epochs(trial0) and (trial0 / "backup" / "training_metadata.json").exists():
                seen["epochs"] = len(history_epochs(trial0))
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=preempt_after_first_epoch, daemon=True)
    start = time.monotonic()
    thread.start()
    assert run_medtf("tune", path, "--tune-dir", tune_dir, "--quiet") == EXIT_PREEMPTED
    thread.join()
    first = time.monotonic() - start
    assert seen["epochs"] >= 1, seen
    # trial 0 is left ongoing (not ended, not counted), its backup kept; no trial 1 yet, no results written
    oracle = json.loads((tune_dir / "oracle" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {"tuner0": "0"} and oracle["start_order"] == ["0"], oracle
    assert oracle["end_order"] == [] and oracle["run_times"] == {}, oracle
    assert (trial0 / "backup" / "training_metadata.json").is_file()
    assert not (trial0 / "tuner_runs.jsonl").exists() and not (tune_dir / "results.csv").exists()
    assert 1 <= len(history_epochs(trial0)) < 3

    assert run_medtf("tune", path, "--tune-dir", tune_dir, "--quiet") == 0
    with open(tune_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == ["0", "1"] and [r["status"] for r in rows] == ["COMPLETED"] * 2
    # trial 0 ran to its end once, in its own directory: every epoch once, the first of this start from the backup
    assert history_epochs(trial0) == [0, 1, 2]
    runs = [json.loads(line) for line in (trial0 / "tuner_runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["epochs"] == 3
    assert seen["epochs"] <= runs[0]["initial_epoch"] <= seen["epochs"] + 1 and runs[0]["initial_epoch"] < 3
    assert not (trial0 / "backup").exists()
    trial1_runs = (tune_dir / "trials" / "1" / "tuner_runs.jsonl").read_text().splitlines()
    assert len(trial1_runs) == 1 and json.loads(trial1_runs[0])["initial_epoch"] == 0
    oracle = json.loads((tune_dir / "oracle" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and sorted(oracle["end_order"]) == ["0", "1"]
    assert oracle["run_times"] == {"0": 1, "1": 1} and oracle["retry_queue"] == []
    assert (tune_dir / "best.yaml").is_file()
    assert first < 60
