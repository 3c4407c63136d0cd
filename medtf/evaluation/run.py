"""What `evaluate_run` needs from a run directory: the resolved config, a checkpoint and the preprocessing.

A run directory is what `medtf.training.engine.train` writes (``config.yaml``, ``checkpoints/{best,last}.keras``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

CHECKPOINTS = ("best", "last")


def checkpoint_path(run_dir: str | os.PathLike, checkpoint: str = "best") -> Path:
    """``run_dir/checkpoints/{best,last}.keras``, or ``checkpoint`` itself when it is a path to a ``.keras`` file."""
    if checkpoint in CHECKPOINTS:
        path = Path(run_dir) / "checkpoints" / f"{checkpoint}.keras"
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best"):
    """``(ExperimentConfig, keras.Model, config path, checkpoint path)`` of a run directory.

    Importing `medtf.models`, `medtf.losses` and `medtf.metrics` registers the custom objects (models, losses,
    metrics) that ``keras.saving.load_model`` must resolve; ``compile=False`` because evaluation needs no optimizer.

    Example:
        >>> config, model, _, _ = load_run("runs/brachy", "best")
        >>> config.data.dir
    """
    import keras

    import medtf.losses  # noqa: F401  (registers serializable losses)
    import medtf.metrics  # noqa: F401
    import medtf.models  # noqa: F401
    from medtf.training.config import load_config
    from medtf.training.experiment import parse_config

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a run directory written by `medtf train`)")
    # Relative data.dir (run directories written before paths were stored absolute) meant the training's cwd.
    config = parse_config(load_config(config_path), components=False)
    ckpt = checkpoint_path(run_dir, checkpoint)
    model = keras.saving.load_model(ckpt, compile=False)
    return config, model, config_path, ckpt


def data_dir_of(config, config_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """The shard folder to read: ``data_dir`` when given, else the run's ``data.dir``, which must still hold a
    manifest; when it does not, the `ManifestError` names the path and suggests ``--data-dir``."""
    from medtf.data.manifest import MANIFEST_NAME, ManifestError

    if data_dir is not None:
        return Path(data_dir)
    path = Path(config.data.dir)
    if not (path / MANIFEST_NAME).is_file():
        raise ManifestError(f"the shards this run trained on are not at {path} (data.dir of {config_path}: no "
                            f"{MANIFEST_NAME} there); if they moved, pass --data-dir DIR")
    return path


def build_preprocess(config):
    """The deterministic preprocessing of the config's ``data.preprocess`` (None when there is none).

    ``config``: an `ExperimentConfig`, or its raw mapping. The training engine's `build_preprocess` builds it, so
    evaluation always sees the inputs the model was trained on.
    """
    from medtf.training.experiment import parse_config
    from medtf.training.inputs import build_preprocess as build

    return build(parse_config(config, components=False).data)


def eval_patch_size(patch_size: Any, spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """Sliding-window patch from the config's ``data.patch_size`` (the training patch), per spatial axis.

    ``None`` -> the whole image; an int -> a cube/square; a list -> as given; a sampler config
    ``{"name": "random_patch", "size": ...}`` -> its size.

    Example:
        >>> eval_patch_size({"name": "random_patch", "size": [32, 64, 64]}, (40, 96, 96))
        (32, 64, 64)
        >>> eval_patch_size(None, (256, 256))
        (256, 256)
    """
    nd = len(spatial_shape)
    if patch_size is None:
        return tuple(int(s) for s in spatial_shape)
    if isinstance(patch_size, Mapping):
        size = patch_size.get("size", patch_size.get("patch_size"))
        if size is None:
            raise ValueError(f"patch_size config has no size: {dict(patch_size)}")
        patch_size = size
    if isinstance(patch_size, (int, float)):
        return (int(patch_size),) * nd
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != nd:
        raise ValueError(f"patch_size {patch_size} does not match {nd} spatial dims")
    return patch_size
