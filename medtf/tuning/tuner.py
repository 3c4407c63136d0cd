"""``medtf tune``: a keras-tuner search in which every trial is an ordinary ``medtf train`` run.

Tune directory layout::

    TUNE_DIR/search.yaml              the resolved experiment (tune section included) the search started from
    TUNE_DIR/oracle/                  keras-tuner's project: oracle.json, trial_<id>/trial.json, <tuner id>.json
    TUNE_DIR/trials/<trial id>/       one run directory per trial (config.yaml, logs/, history.csv, checkpoints/)
                                      plus tuner_runs.jsonl: one line per execution (tuner id, host, seconds)
    TUNE_DIR/results.csv              one row per trial: status, hyperparameters, objective, seconds, run dir
    TUNE_DIR/best.yaml                the best trial's full experiment (no tune section): `medtf train` it
    TUNE_DIR/hparams/                 TensorBoard HParams: the tuned hyperparameters against the objective

Re-running the same command continues the search (keras-tuner ``overwrite=False``): finished trials are kept, an
interrupted one is handed out again under its own id and resumes from its run directory's backup.

Preemption (SIGUSR1, see `medtf.tuning.stop`): a worker's running trial saves its backup mid-epoch and is left
unfinished (still ongoing in the oracle), the chief saves the oracle, and `medtf tune` on the chief exits
``EXIT_PREEMPTED`` (75); slurm/tune.sbatch then requeues the job and the search continues where it stopped.

Hyperband trials that continue an earlier trial (``tuner/trial_id``) train from scratch for ``tuner/epochs`` epochs
in their own run directory (no warm start from the earlier trial's weights).

Trials are compared on the validation split only: an experiment whose ``data.val_split`` (or a training split,
or a ``tune.space`` value for either) is a test split is refused before the search starts
(`medtf.training.selection`, as `medtf roulette` does). The test split is evaluated once, at the end, on the model
trained from ``best.yaml`` (``medtf evaluate RUN_DIR --split test``); with ``data.fold: k`` the search selects on
the round's selection fold (``data.selection_fold: inner``: ``fold-((k+1) mod K)``, `medtf.training.inputs.fold_roles`)
and never reads the held-out ``fold-k``.

A trial that raises is recorded as FAILED (its error in results.csv) and the search goes on;
``tune.max_consecutive_failed_trials`` failures in a row stop it (results.csv is still written; `medtf tune` exits 1).

Distributed (keras-tuner's own mechanism): with ``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT`` set, the
process whose ``KERASTUNER_TUNER_ID`` contains ``chief`` serves the oracle over gRPC and trains nothing; every
other process (``tuner0``, ``tuner1``, ...) asks it for trials, trains them and reports back. All of them must see
the same TUNE_DIR. The chief writes results.csv / best.yaml when the budget is spent and every worker has been
told to stop (slurm/tune.sbatch starts one chief and N workers). The chief listens on ``KERASTUNER_ORACLE_IP``
only and answers only calls that carry the search's shared secret ``MEDTF_ORACLE_TOKEN`` (`medtf.tuning.oracle_auth`,
which also states what that does not protect).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Mapping

import keras_tuner
import yaml
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine.trial import TrialStatus

from medtf.training.config import ConfigError, save_resolved
from medtf.tuning.oracle_auth import TokenInterceptor, authenticate, check_bind_address, oracle_token
from medtf.tuning.settings import TuneConfigError, TuneSettings, base_config, build_oracle, tune_settings
from medtf.tuning.space import active_values, apply_values
from medtf.tuning.stop import STOP

PROJECT = "oracle"
RUNS_FILE = "tuner_runs.jsonl"


def trial_config(base: Mapping, hp) -> dict:
    """The experiment one trial trains: ``base`` with the trial's active values (and hyperband's epochs)."""
    config = apply_values(base, active_values(hp))
    if "tuner/epochs" in hp.values:  # hyperband: the epoch budget of this round
        config.setdefault("train", {})["epochs"] = int(hp.values["tuner/epochs"])
    return config


def best_epoch(values: list[float], direction: str) -> int | None:
    """Index of the best finite value (first one on ties), None when there is none."""
    finite = [(v, i) for i, v in enumerate(values) if v == v and abs(v) != float("inf")]
    if not finite:
        return None
    sign = -1.0 if direction == "max" else 1.0
    return min(finite, key=lambda vi: (sign * vi[0], vi[1]))[1]


class TrialPreempted(keras_tuner.errors.FatalError):
    """The trial's training saved a backup and stopped on the preemption signal: leave the trial unfinished.

    A `FatalError` so that keras-tuner's ``_try_run_and_update_trial`` passes it on instead of recording the trial
    as INVALID / FAILED; `ExperimentTuner.search` catches it and stops without ending the trial.
    """


class ExperimentTuner(keras_tuner.Tuner):
    """A keras-tuner `Tuner` whose trials are `medtf.training.engine.train` runs of the experiment.

    Args:
        settings: the parsed ``tune`` section (`medtf.tuning.settings.tune_settings`).
        base: the experiment without ``tune`` (every trial starts from it).
        tune_dir: the tune directory (see the module docstring).
        idle_wait: seconds to wait before asking again when the oracle answers IDLE (hyperband waiting for the
            trials of a round to finish).
    """

    def __init__(self, settings: TuneSettings, base: Mapping, tune_dir: str | os.PathLike, idle_wait: float = 2.0):
        self.settings = settings
        self.base = dict(base)
        self.tune_dir = Path(tune_dir)
        self.idle_wait = idle_wait
        self.preempted = False  # set by search(): it stopped on the preemption signal, the search is not over
        super().__init__(oracle=build_oracle(settings), directory=str(self.tune_dir), project_name=PROJECT,
                         overwrite=False)
        if self._is_worker():  # keras-tuner's OracleClient: every call must carry the search's token
            authenticate(self.oracle, oracle_token())

    def trial_dir(self, trial_id: str) -> Path:
        return self.tune_dir / "trials" / str(trial_id)

    def search(self, *fit_args, **fit_kwargs):
        """Run trials until the oracle says stop; the chief serves the oracle instead (see `serve_oracle`)."""
        if dist_utils.is_chief_oracle():
            self.save()
            workers = int(os.environ.get("MEDTF_TUNE_WORKERS", "0"))
            failure, self.preempted = serve_oracle(self.oracle, workers=workers, stop=STOP)
            if failure is not None:
                raise failure
            return
        # BaseTuner.search, plus a pause on IDLE (it would otherwise ask again at once, in a tight loop) and a save
        # before the first trial, so that a search killed during its first trial is reloaded, not started afresh.
        if not self._is_worker():
            self.save()
        self.on_search_begin()
        while True:
            if STOP.requested:  # preempted between trials: ask for no new one
                self.preempted = True
                break
            self.pre_create_trial()
            trial = self.oracle.create_trial(self.tuner_id)
            if trial.status == TrialStatus.STOPPED:
                break
            if trial.status == TrialStatus.IDLE:
                time.sleep(self.idle_wait)
                continue
            self.on_trial_begin(trial)
            try:
                with STOP.resend_while_running():
                    self._try_run_and_update_trial(trial, *fit_args, **fit_kwargs)
            except TrialPreempted as exc:
                # Not ended: the oracle keeps the trial ongoing, and its next start hands it out again (same id,
                # same run directory, resumed from the backup). A local search saves that state here.
                print(f"medtf tune: {exc}", flush=True)
                self.preempted = True
                if not self._is_worker():
                    self.save()
                break
            self.on_trial_end(trial)
        self.on_search_end()

    def run_trial(self, trial, *args, **kwargs) -> dict:
        """Train the trial's experiment; return every metric at the epoch where the objective was best."""
        import keras

        from medtf.training.engine import NonFiniteLossError, train

        name, direction = self.settings.objective, self.settings.direction
        run_dir = self.trial_dir(trial.trial_id)
        try:
            config = trial_config(self.base, trial.hyperparameters)
        except ConfigError as exc:
            raise keras_tuner.errors.FailedTrialError(str(exc)) from None
        keras.backend.clear_session()  # a fresh graph per trial: earlier trials' models are freed
        start, started = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            result = train(config, run_dir)
        except NonFiniteLossError as exc:  # the hyperparameters diverge: a result, not worth a retry
            raise keras_tuner.errors.FailedTrialError(str(exc)) from None
        seconds = time.monotonic() - start
        if result["preempted"]:
            STOP.request()  # the signal went to the training's own handler: this process stops too
            raise TrialPreempted(f"trial {trial.trial_id} preempted: backup saved in {run_dir / 'backup'}; "
                                 f"the next start of the search resumes it")
        history = result["history"]
        if name not in history:
            raise keras_tuner.errors.FatalError(f"tune.objective {name!r} is not a metric of the run "
                                                f"(metrics: {', '.join(sorted(history))})")
        best = best_epoch(history[name], direction)
        index = len(history[name]) - 1 if best is None else best  # all NaN: the oracle marks the trial invalid
        metrics = {k: float(v[index]) for k, v in history.items() if len(v) > index}
        record = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id, "host": socket.gethostname(),
                  "pid": os.getpid(), "started": started, "seconds": round(seconds, 3),
                  "epochs": len(history[name]), "best_epoch": index + 1, name: metrics[name],
                  # > 0: this execution resumed a backup (a preempted earlier start) at this 0-based epoch
                  "initial_epoch": int(result.get("initial_epoch") or 0)}
        with open(run_dir / RUNS_FILE, "a", encoding="utf-8") as f:  # appended: a re-run trial shows twice
            f.write(json.dumps(record) + "\n")
        return metrics

    def load_model(self, trial):
        """The best checkpoint of a trial's run directory."""
        import keras

        return keras.saving.load_model(self.trial_dir(trial.trial_id) / "checkpoints" / "best.keras")


def serve_oracle(oracle, workers: int = 0, poll: float = 0.5, bind: str | None = None, token: str | None = None,
                 stop=None) -> tuple[RuntimeError | None, bool]:
    """Serve ``oracle`` to the workers over gRPC until the search is over (the chief's job).

    keras-tuner's own ``oracle_chief.start_server`` binds to ``KERASTUNER_ORACLE_IP`` and polls every 20 s after
    the first stop. This binds to ``bind`` (default ``KERASTUNER_ORACLE_IP``: the address the workers use, which
    must be one of this node's), answers only calls carrying ``token`` (default ``MEDTF_ORACLE_TOKEN``, see
    `medtf.tuning.oracle_auth`), polls every ``poll`` s, saves the oracle after every finished trial (so a
    restarted search does not run the last one again), and, given ``workers``, also waits until that many distinct
    workers were told to stop, so a worker that starts late is not left waiting for a chief that left. When
    ``tune.max_consecutive_failed_trials`` is reached, every worker is told to stop and the error is returned.
    Given ``stop`` (a `medtf.tuning.stop.StopRequest`), it also returns once ``stop.requested`` (preemption: the
    job script signals the chief after its workers left), saving the oracle with its ongoing trials.

    Returns:
        ``(failure, preempted)``: the too-many-failures error (or None) and whether it stopped on ``stop`` before
        the search was over.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief
    from keras_tuner.src.engine import trial as trial_module

    class Servicer(oracle_chief.OracleServicer):
        def __init__(self, oracle):
            super().__init__(oracle)
            self.stopped: set[str] = set()
            self.failure: RuntimeError | None = None

        def CreateTrial(self, request, context):  # noqa: N802 (gRPC method name)
            if self.failure is not None:  # too many failed trials: every worker is told to stop
                self.oracle.tuner_ids.discard(request.tuner_id)
                trial = trial_module.Trial(self.oracle.get_space(), status=trial_module.TrialStatus.STOPPED)
            else:
                trial = self.oracle.create_trial(request.tuner_id)
            if trial.status == trial_module.TrialStatus.STOPPED:
                self.stop_triggered = True
                self.stopped.add(request.tuner_id)
            return protos.get_service().CreateTrialResponse(trial=trial.to_proto())

        def EndTrial(self, request, context):  # noqa: N802
            try:
                response = super().EndTrial(request, context)
            except RuntimeError as exc:  # tune.max_consecutive_failed_trials reached: stop, and report it
                if "consecutive failures" not in str(exc):
                    raise
                self.failure = exc
                settle_ended_trials(self.oracle)
                response = protos.get_service().EndTrialResponse()
            # Oracle.end_trial saves its state before it drops the trial from `ongoing_trials`; a worker does not
            # save the oracle afterwards (only the chief can), so save here: else a re-run would run it again.
            self.oracle.save()
            return response

    port = os.environ["KERASTUNER_ORACLE_PORT"]
    bind = os.environ["KERASTUNER_ORACLE_IP"] if bind is None else bind
    token = oracle_token() if token is None else token
    check_bind_address(bind)
    # One request at a time, like keras-tuner; the interceptor refuses calls without the token before the oracle.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), interceptors=[TokenInterceptor(token)])
    servicer = Servicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    host = f"[{bind}]" if ":" in bind else bind  # an IPv6 address
    if not server.add_insecure_port(f"{host}:{port}"):
        raise RuntimeError(f"the tuning chief cannot listen on {bind}:{port} (KERASTUNER_ORACLE_IP must be an "
                           f"address of this node, and the port free)")
    server.start()
    preempted = False
    print(f"medtf tune: chief serving the oracle on {bind}:{port} ({socket.gethostname()})"
          + (f" for {workers} workers" if workers else ""), flush=True)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)
                   and len(servicer.stopped) >= workers):
            if stop is not None and stop.requested:
                print("medtf tune: chief preempted: oracle saved with its ongoing trials "
                      f"{sorted(t.trial_id for t in oracle.ongoing_trials.values())}", flush=True)
                preempted = True
                break
            time.sleep(poll)
    finally:
        server.stop(grace=2)
        oracle.save()
    return servicer.failure, preempted


def settle_ended_trials(oracle) -> None:
    """Finish what `Oracle.end_trial` left undone when it raised after too many failures: release the oracle's
    lock, save the ended trials and drop them from the ongoing ones (a re-run would otherwise run them again)."""
    import threading

    from keras_tuner.src.engine import oracle as oracle_module

    # keras-tuner's @synchronized releases its lock only when the call returns: after a raise the lock stays with
    # this thread, and the chief's main loop (exit_chief, also synchronized) would wait for it forever.
    if oracle_module.THREADS[oracle] == threading.current_thread().name:
        oracle_module.THREADS[oracle] = None
        oracle_module.LOCKS[oracle].release()
    for tuner_id, trial in list(oracle.ongoing_trials.items()):
        if trial.status != TrialStatus.RUNNING:
            oracle.ongoing_trials.pop(tuner_id)
            oracle._save_trial(trial)


def _check_same_search(config: Mapping, tune_dir: Path) -> None:
    """A tune directory holds one search: the same tuner, objective and space on every re-run."""
    path = tune_dir / "search.yaml"
    if not path.exists():
        return
    before = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("tune") or {}
    now = config.get("tune") or {}
    changed = [k for k in ("tuner", "objective", "space") if before.get(k) != now.get(k)]
    if changed:
        raise TuneConfigError(f"{tune_dir} holds a search with a different tune.{'/'.join(changed)}; keras-tuner "
                              f"would continue the old one. Use a new --tune-dir (or remove this one)")


def tune(config, tune_dir: str | os.PathLike, verbose: int = 1) -> dict:
    """Run (or continue) the search described by the experiment's ``tune`` section in ``tune_dir``.

    ``config``: an `medtf.training.experiment.ExperimentConfig` or its raw mapping.

    Returns ``{"role": "local" | "chief" | "worker", "tuner_id", "preempted", "rows", "best", "results",
    "best_config", "hparams"}`` (the last five None on a worker, which only trains, and after a preemption:
    SIGUSR1 stopped the search before its end, the state to continue from is saved, nothing is written).
    Raises `ConfigError` for a bad ``tune`` section and `SearchFailedError` when too many trials failed in a row
    (after writing results.csv).

    Example:
        >>> out = tune(load_config("experiments/lgg_unet2d_tune.yaml"), "runs/lgg-tune")   # doctest: +SKIP
        >>> out["best"]["trial_id"], out["best_config"]
    """
    from medtf.training.experiment import parse_config
    from medtf.tuning.results import collect_rows, write_outputs

    experiment = parse_config(config)  # validated (tune section included) before anything starts
    settings = tune_settings(experiment)
    config = experiment.as_dict()  # resolved: search.yaml, best.yaml and the trials get absolute paths, defaults
    tune_dir = Path(tune_dir)
    role = ("chief" if dist_utils.is_chief_oracle() else "worker") if dist_utils.has_chief_oracle() else "local"
    if role != "local":
        oracle_token()  # the shared secret is there before anything starts (see medtf.tuning.oracle_auth)
    if role != "worker":
        _check_same_search(config, tune_dir)
        save_resolved(config, tune_dir, "search.yaml")
    with STOP.armed():  # SIGUSR1 from here on means "save and stop" (medtf.tuning.stop), not "die"
        tuner = ExperimentTuner(settings, base_config(config), tune_dir)
        tuner.oracle.verbose = verbose if role != "worker" else 0
        failure = _search(tuner, role)
    out = {"role": role, "tuner_id": tuner.tuner_id, "preempted": tuner.preempted, "rows": None, "best": None,
           "results": None, "best_config": None, "hparams": None}
    if role == "worker" or tuner.preempted:
        return out
    rows = collect_rows(tuner.oracle, settings, tune_dir)
    out.update(rows=rows, **write_outputs(rows, settings, base_config(config), tuner.oracle, tune_dir))
    if failure is not None:
        raise SearchFailedError(f"search stopped: {failure}".strip()) from None
    return out


def _search(tuner: ExperimentTuner, role: str) -> RuntimeError | None:
    """``tuner.search()``; returns keras-tuner's too-many-failures error (after settling the oracle)."""
    failure = None
    try:
        tuner.search()
    except keras_tuner.errors.FatalError as exc:  # e.g. the objective is not a metric: every trial would fail
        raise SearchFailedError(f"search stopped: {exc}") from None
    except RuntimeError as exc:  # keras-tuner's stop after tune.max_consecutive_failed_trials failures in a row
        if "consecutive failures" not in str(exc) or role == "worker":
            raise
        failure = exc
        settle_ended_trials(tuner.oracle)
        tuner.save()
    return failure


class SearchFailedError(RuntimeError):
    """Too many trials failed in a row (``tune.max_consecutive_failed_trials``); results.csv was still written."""
