"""Training: experiment configs (`config`: the file plus dotted overrides; `experiment`: parsed into typed,
validated sections), the `medtf train` loop (`engine.train`) and its parts.

`inputs` (datasets, ``data.preprocess``), `schedules` (learning rate), `strategy` (tf.distribute by name, which
worker writes what), `callbacks` (NaN guard, LR logging, resumable history, HParams) and `diagnostics`
(TensorBoard image panels, histograms, gradient flow). Importing this package stays light (no TensorFlow).
"""

from medtf.training.config import ConfigError, apply_overrides, load_config, save_resolved
from medtf.training.experiment import ExperimentConfig, load_experiment, parse_config

__all__ = ["ConfigError", "ExperimentConfig", "apply_overrides", "load_config", "load_experiment", "parse_config",
           "save_resolved"]
