"""TensorBoard embedding-projector export: vectors + per-row metadata in a folder TensorBoard's projector reads.

The folder holds ``embeddings.ckpt-1.*`` (a TF checkpoint with one variable ``embedding (n, D)`` float32),
``metadata.tsv`` (a header row, then one row per vector, in vector order) and ``projector_config.pbtxt`` written by
``tensorboard.plugins.projector`` (no ``model_checkpoint_path``: the plugin finds the checkpoint beside the config,
so the folder can be moved or copied off the cluster). PCA / t-SNE / UMAP are computed by the projector in the
browser; nothing is reduced here.

See it with ``tensorboard --logdir FOLDER`` -> the "Projector" tab (choose it in the drop-down menu when it is
not among the first tabs).

Example:
    >>> write_projector("runs/nuclei/eval-test/projector", features, {"class": names, "tile": tiles})
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

TENSOR_NAME = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # the checkpoint key of `tf.train.Checkpoint(embedding=...)`
CONFIG_NAME = "projector_config.pbtxt"


def _cell(value) -> str:
    # Tabs and newlines would shift the projector's columns / rows.
    return " ".join(str(value).split()) or "-"


def write_projector(folder, embeddings: np.ndarray, metadata: Mapping[str, Sequence]) -> Path:
    """Write ``embeddings (n, D)`` and ``metadata`` (column name -> ``n`` values) as a projector folder.

    Args:
        folder: output folder (created); an existing projector export there is replaced.
        embeddings: ``(n, D)`` vectors, ``n >= 1``.
        metadata: columns of ``n`` values each, written in the given order (e.g. class, prediction, tile).

    Returns the folder. Raises ValueError when the shapes do not line up.
    """
    import tensorflow as tf
    from tensorboard.plugins import projector

    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"projector export: embeddings must be (n >= 1, D), got {embeddings.shape}")
    n = embeddings.shape[0]
    bad = {k: len(v) for k, v in metadata.items() if len(v) != n}
    if bad:
        raise ValueError(f"projector export: {n} embeddings but metadata columns of lengths {bad}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("embeddings.ckpt*"):  # a re-run replaces, never mixes two exports
        old.unlink()
    (folder / "checkpoint").unlink(missing_ok=True)
    tf.train.Checkpoint(embedding=tf.Variable(embeddings)).save(str(folder / "embeddings.ckpt"))
    columns = list(metadata)
    with open(folder / "metadata.tsv", "w", encoding="utf-8") as f:
        f.write("\t".join(_cell(c) for c in columns) + "\n")
        for i in range(n):
            f.write("\t".join(_cell(metadata[c][i]) for c in columns) + "\n")
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.metadata_path = "metadata.tsv"  # relative: resolved against the config's folder
    embedding.tensor_shape.extend(embeddings.shape)
    projector.visualize_embeddings(str(folder), config)
    return folder


def read_projector(folder) -> tuple[np.ndarray, list[dict], object]:
    """``(embeddings (n, D), metadata rows as dicts, ProjectorConfig)`` of a `write_projector` folder (tests,
    notebooks)."""
    import csv

    import tensorflow as tf
    from google.protobuf import text_format
    from tensorboard.plugins import projector

    folder = Path(folder)
    config = text_format.Parse((folder / CONFIG_NAME).read_text(), projector.ProjectorConfig())
    reader = tf.train.load_checkpoint(str(folder))
    embeddings = reader.get_tensor(config.embeddings[0].tensor_name)
    with open(folder / config.embeddings[0].metadata_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return embeddings, rows, config


# --- nucleus classification (`medtf evaluate RUN_DIR --projector`) ---
def nucleus_embedding_model(model):
    """``inputs -> (nucleus tokens (B, M, D), probabilities (B, M, K))`` of a `NucleusClassifier`, sharing its
    layers: the tokens the head classifies (layer ``nucleus_features``), in the same pass as the probabilities."""
    import keras

    return keras.Model(model.input, [model.get_layer("nucleus_features").output, model.output],
                       name="nucleus_embeddings")


def export_nucleus_projector(folder, embeddings, labels, predicted, tiles, class_names) -> Path:
    """The projector folder of a split's real nuclei: one row per nucleus (the order of ``per_nucleus.csv``) with
    ``class``, ``predicted`` (class names), ``correct`` and ``tile`` (the tile's 0-based position in the
    evaluated split; no example ids, so nothing identifies a patient or slide)."""
    names = list(class_names)
    labels, predicted = np.asarray(labels, int), np.asarray(predicted, int)
    return write_projector(folder, np.stack(embeddings), {
        "class": [names[k] for k in labels], "predicted": [names[k] for k in predicted],
        "correct": ["yes" if t == p else "no" for t, p in zip(labels, predicted)], "tile": list(tiles)})
