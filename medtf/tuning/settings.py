"""The ``tune`` section of an experiment: which tuner, which objective, how many trials, and the search space.

    tune:
      tuner: bayesian              # random | hyperband | bayesian
      objective: {name: val_dice, direction: max}    # default: train.monitor / train.mode
      max_trials: 20               # random, bayesian (default 10)
      seed: 0                      # oracle seed (default: the experiment's seed, else 0)
      # hyperband: max_epochs (default train.epochs), factor (3), hyperband_iterations (1)
      # bayesian: num_initial_points (default 3 x the number of hyperparameters), alpha, beta
      # all: max_retries_per_trial (0), max_consecutive_failed_trials (3)
      space: {...}                 # medtf.tuning.space

Every other key is an error (a typo must not be silently ignored).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from medtf.training.config import ConfigError
from medtf.training.hyperparams import did_you_mean
from medtf.tuning.space import build_hyperparameters, check_keys, check_values, parse_space

TUNERS = ("random", "hyperband", "bayesian")
_COMMON = {"tuner", "objective", "seed", "space", "max_retries_per_trial", "max_consecutive_failed_trials"}
_PER_TUNER = {"random": {"max_trials"}, "bayesian": {"max_trials", "num_initial_points", "alpha", "beta"},
              "hyperband": {"max_epochs", "factor", "hyperband_iterations"}}


class TuneConfigError(ConfigError):
    """The ``tune`` section is missing or wrong."""


@dataclass
class TuneSettings:
    """The parsed ``tune`` section (see the module docstring)."""

    tuner: str
    objective: str
    direction: str
    specs: dict
    oracle_args: dict = field(default_factory=dict)

    def hyperparameters(self):
        return build_hyperparameters(self.specs)


def _objective(tune: Mapping, train) -> tuple[str, str]:
    raw = tune.get("objective")
    monitor, mode = train.monitor, train.mode
    if raw is None:
        name, direction = monitor, mode
    elif isinstance(raw, str):
        name = raw
        direction = mode if raw == monitor else "min" if raw.endswith("loss") else None
        if direction is None:
            raise TuneConfigError(f"tune.objective {raw!r}: give the direction too, e.g. "
                                  f"{{name: {raw}, direction: max}}")
    elif isinstance(raw, Mapping) and set(raw) <= {"name", "direction"} and raw.get("name"):
        name, direction = str(raw["name"]), raw.get("direction", mode if raw["name"] == monitor else None)
    else:
        raise TuneConfigError(f"tune.objective must be a metric name or {{name: ..., direction: max|min}}, "
                              f"got {raw!r}")
    if direction not in ("max", "min"):
        raise TuneConfigError(f"tune.objective {name!r}: direction must be max or min (got {direction!r})")
    return name, direction


def _positive_int(tune: Mapping, key: str, default: Any, minimum: int = 1) -> int:
    value = tune.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TuneConfigError(f"tune.{key} must be an integer >= {minimum} (got {value!r})")
    return value


def tune_settings(config) -> TuneSettings:
    """Validate the experiment's ``tune`` section against the rest of the config.

    ``config`` is an `medtf.training.experiment.ExperimentConfig` or its raw mapping (parsed here). Every value a
    ``tune.space`` entry can take is applied to the base config and checked like a file's value (`check_values`).
    Raises `TuneConfigError` / `SpaceError` (both `ConfigError`) with the offending key in the message.
    """
    from medtf.training.experiment import ExperimentConfig, parse_config

    experiment = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
    tune = experiment.tune
    if not isinstance(tune, Mapping):
        raise TuneConfigError("the experiment has no `tune:` section (see medtf/tuning/settings.py)")
    tuner = tune.get("tuner", "random")
    if tuner not in TUNERS:
        raise TuneConfigError(f"tune.tuner {tuner!r}: choose from {', '.join(TUNERS)}{did_you_mean(tuner, TUNERS)}")
    unknown = sorted(set(tune) - _COMMON - _PER_TUNER[tuner])
    if unknown:
        allowed = sorted(_COMMON | _PER_TUNER[tuner])
        raise TuneConfigError(f"tune: unknown key(s) {unknown} for tuner {tuner}{did_you_mean(unknown[0], allowed)} "
                              f"(allowed: {', '.join(allowed)})")
    train = experiment.train
    if train.strategy == "multiworker":
        raise TuneConfigError("tune: trials run one per worker process; train.strategy multiworker cannot be "
                              "tuned (use auto or mirrored)")
    objective, direction = _objective(tune, train)
    specs = parse_space(tune.get("space"))
    base = base_config(experiment.as_dict())
    check_keys(specs, base)
    check_values(specs, base, parse_config)
    _check_no_test_selection(experiment, specs)
    if tuner == "hyperband" and "train.epochs" in specs:
        raise TuneConfigError("tune.space: hyperband sets train.epochs itself (tune.max_epochs); remove it")
    seed = tune.get("seed", experiment.seed or 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TuneConfigError(f"tune.seed must be an integer >= 0 (got {seed!r})")
    # keras-tuner reads seed 0 as "no seed" (a random one): shift by one so every seed is reproducible.
    args = {"seed": seed + 1,
            "max_retries_per_trial": _positive_int(tune, "max_retries_per_trial", 0, minimum=0),
            "max_consecutive_failed_trials": _positive_int(tune, "max_consecutive_failed_trials", 3)}
    if tuner == "hyperband":
        args["max_epochs"] = _positive_int(tune, "max_epochs", train.epochs)
        args["factor"] = _positive_int(tune, "factor", 3, minimum=2)
        args["hyperband_iterations"] = _positive_int(tune, "hyperband_iterations", 1)
    else:
        args["max_trials"] = _positive_int(tune, "max_trials", 10)
    if tuner == "bayesian":
        _require_sklearn()
        if "num_initial_points" in tune:
            args["num_initial_points"] = _positive_int(tune, "num_initial_points", None)
        for key in ("alpha", "beta"):
            if key in tune:
                if isinstance(tune[key], bool) or not isinstance(tune[key], (int, float)) or tune[key] <= 0:
                    raise TuneConfigError(f"tune.{key} must be a positive number (got {tune[key]!r})")
                args[key] = float(tune[key])
    return TuneSettings(tuner=tuner, objective=objective, direction=direction, specs=specs, oracle_args=args)


def _check_no_test_selection(experiment, specs: Mapping) -> None:
    """Trials are compared on the validation split only (`medtf.training.selection`), whatever the space sets."""
    from medtf.training.selection import check_selection_split, is_test_split

    check_selection_split(experiment, "medtf tune")
    for key in ("data.val_split", "data.train_split"):
        spec = specs.get(key) or {}
        values = [*spec.get("values", ()), spec.get("value"), spec.get("default")]
        flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
        if any(is_test_split(v) for v in flat):
            raise TuneConfigError(f"tune.space.{key}: a trial on the test split would select on it (leak); "
                                  f"tune on validation splits and evaluate the test split once at the end")


def _require_sklearn() -> None:
    # BayesianOptimizationOracle fits a scikit-learn Gaussian process; say so before a job waits in the queue.
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise TuneConfigError("tune.tuner bayesian needs scikit-learn (keras-tuner's [bayesian] extra), which is "
                              "not installed here; install scikit-learn or use tuner random / hyperband") from None


def base_config(config: Mapping) -> dict:
    """The experiment without its ``tune`` section: what every trial starts from."""
    base = copy.deepcopy(dict(config))
    base.pop("tune", None)
    return base


def build_oracle(settings: TuneSettings):
    """The keras-tuner oracle for ``settings``: RandomSearchOracle, HyperbandOracle or BayesianOptimizationOracle.

    The space is fixed up front (``allow_new_entries=False``): trials can only take values from ``tune.space``.
    """
    import keras_tuner

    classes = {"random": keras_tuner.oracles.RandomSearchOracle, "hyperband": keras_tuner.oracles.HyperbandOracle,
               "bayesian": keras_tuner.oracles.BayesianOptimizationOracle}
    return classes[settings.tuner](objective=keras_tuner.Objective(settings.objective, settings.direction),
                                   hyperparameters=settings.hyperparameters(), allow_new_entries=False,
                                   **settings.oracle_args)
