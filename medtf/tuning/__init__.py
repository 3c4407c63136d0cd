"""Hyperparameter search over experiment configs with keras-tuner (``medtf tune``).

`medtf.tuning.space` turns the ``tune.space`` section into keras-tuner hyperparameters and applies a trial's values
to the config; `medtf.tuning.settings` validates the rest of the ``tune`` section and builds the oracle;
`medtf.tuning.tuner` runs the search (locally or distributed: one chief serving the oracle, N workers);
`medtf.tuning.results` writes results.csv, best.yaml and the TensorBoard HParams view.
"""

from medtf.tuning.settings import TuneConfigError, TuneSettings, base_config, build_oracle, tune_settings
from medtf.tuning.space import SpaceError, active_values, apply_values, build_hyperparameters, parse_space

__all__ = ["SpaceError", "TuneConfigError", "TuneSettings", "active_values", "apply_values", "base_config",
           "build_hyperparameters", "build_oracle", "parse_space", "tune", "tune_settings"]


def tune(config, tune_dir, verbose: int = 1) -> dict:
    """See `medtf.tuning.tuner.tune` (imported on use: keras-tuner and TensorFlow load only when searching)."""
    from medtf.tuning.tuner import tune as _tune

    return _tune(config, tune_dir, verbose=verbose)
