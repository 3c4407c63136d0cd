"""Tasks: what a model is trained for, on top of a reusable backbone (keras-hub's Backbone -> Task split).

A task owns everything between the parsed examples of any data kind and the engine: which fields become the model's
inputs and targets, the default loss, metrics and checkpoint monitor (``compile(loss="auto", metrics="auto")`` as
keras-hub's ``ImageClassifier``), the TensorBoard diagnostics, the evaluator, the export signatures and the predict
writer. An experiment declares ``task:`` (default ``segmentation``, so earlier configs and run directories keep
working); any data kind that provides the fields a task needs works with it.

==================  ================================================  ============================  ================
task                fields (parsed example)                           default loss                  monitor
==================  ================================================  ============================  ================
segmentation        image, mask                                       dice_ce                       val_dice (max)
classification      image, label (or mask: any foreground -> 1)       binary / sparse categorical   val_auc (max)
                                                                      cross-entropy
contrastive         image, report                                     symmetric InfoNCE (CLIP)      val_loss (min)
masked_modeling     image (2D); tokens (H/P x W/P ids) for token      masked MSE (pixels) / masked  val_loss (min)
                    targets. In-pipeline BEiT blockwise masks, ~40 %  sparse cross-entropy (tokens)
                    of the patches (medtf.models.MaskedImageModel)
masked_lm           report (text). WordPiece vocabulary from the      masked sparse cross-entropy   val_loss (min)
                    training split; ~15 % of the tokens masked in     (masked tokens only)
                    tf.data (medtf.models.ReportMaskedLM)
tokenizer           image (labels ignored): a VQ-VAE learns one       reconstruction MSE (+ the     val_loss (min)
                    discrete token per ViT patch (the MIM targets)    quantiser's commitment loss)
nucleus_            image (2D), boxes, classes (nuclei-he): one       cross-entropy pooled over     val_f1 (max)
classification      class per ground-truth nucleus box                the real nuclei
                    (medtf.models.vit.NucleusClassifier)
==================  ================================================  ============================  ================

Example:
    >>> task = get_task("classification")
    >>> task.compile(model, optimizer)            # loss="auto", metrics="auto"
    >>> to_model = task.model_inputs(model)       # parsed example -> (x, y) for make_dataset(model_inputs=...)

The names and monitors here import no TensorFlow (config validation uses them); `get_task` imports the task.
"""

from __future__ import annotations

import importlib

# name -> (module, class, default monitor, mode). Monitors are what Keras logs for the task's default metrics.
_TASKS = {
    "segmentation": ("medtf.tasks.segmentation", "SegmentationTask", "val_dice", "max"),
    "classification": ("medtf.tasks.classification", "ClassificationTask", "val_auc", "max"),
    "contrastive": ("medtf.tasks.contrastive", "ContrastiveTask", "val_loss", "min"),
    "masked_modeling": ("medtf.tasks.masked_modeling", "MaskedModelingTask", "val_loss", "min"),
    "masked_lm": ("medtf.tasks.masked_lm", "MaskedLMTask", "val_loss", "min"),
    "tokenizer": ("medtf.tasks.tokenizer", "TokenizerTask", "val_loss", "min"),
    "nucleus_classification": ("medtf.tasks.nucleus_classification", "NucleusClassificationTask", "val_f1", "max"),
}


def task_names() -> list[str]:
    """Registered task names."""
    return sorted(_TASKS)


def default_monitor(name: str, model_args: dict | None = None) -> tuple[str, str]:
    """``(monitor, mode)`` a task checkpoints on; deep-supervision segmentation models log ``val_output_dice``."""
    _, _, monitor, mode = _TASKS[name]
    if name == "segmentation" and (model_args or {}).get("deep_supervision"):
        monitor = "val_output_dice"  # Keras prefixes metrics with the output's name when there are several
    return monitor, mode


def get_task(name: str = "segmentation"):
    """The task ``name`` (an instance; tasks hold no state)."""
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; known: {task_names()}")
    module, cls, _, _ = _TASKS[name]
    return getattr(importlib.import_module(module), cls)()





def task_of_run(run_dir) -> str:
    """The ``task`` of a run directory's ``config.yaml`` (``segmentation`` for runs written before tasks)."""
    from pathlib import Path

    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return "segmentation"  # the command itself reports the missing run directory
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return str(config.get("task") or "segmentation")


def task_of_model(model_dir) -> str:
    """The ``task`` of an exported model's ``medtf.json`` (``segmentation`` for models exported before tasks)."""
    import json

    from medtf.export.layout import METADATA_FILE, resolve_model_dir

    try:
        path = resolve_model_dir(model_dir) / METADATA_FILE
        return str(json.loads(path.read_text(encoding="utf-8")).get("task") or "segmentation")
    except Exception:  # noqa: BLE001  (predict itself reports an unreadable model with its own message)
        return "segmentation"
__all__ = ["default_monitor", "get_task", "task_names", "task_of_model", "task_of_run"]
