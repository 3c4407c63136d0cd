"""The training loop behind ``medtf train``: one resolved config in, one self-describing run directory out.

Run directory layout::

    run_dir/config.yaml              the resolved config (what actually ran)
    run_dir/logs/                    TensorBoard: train/ and validation/ scalars (learning_rate included), the
                                     HParams entry (logs/ itself), images/ (validation panels), gradients/
                                     (weight + gradient histograms, gradient flow); logs/worker-<i>/ for the
                                     non-chief workers of a multi-worker run
    run_dir/history.csv              one row per epoch (CSVLogger; continued, not overwritten, on resume)
    run_dir/checkpoints/best.keras   best epoch by ``train.monitor`` / ``train.mode``
    run_dir/checkpoints/last.keras   the latest epoch
    run_dir/backup/                  BackupAndRestore state (re-running the same command resumes; removed on success)
    run_dir/workers/worker-<i>/      checkpoints/ and history.csv of non-chief worker i, only with
                                     ``train.keep_worker_outputs`` (else a temporary folder, removed at the end)

Config keys (beyond ``model``, ``loss``, ``optimizer``; everything below is optional with the default shown)::

    task: segmentation          what the model is trained for (medtf.tasks): the example -> (inputs, targets)
                                mapping, default loss (loss.name: auto), metrics, monitor, diagnostics

    data:
      dir, kind, batch_size, train_split (train), val_split (val), seed, patch_size (null: whole images)
      transforms: []            augmentations, training only (medtf.transforms configs)
      preprocess: []            deterministic transforms for training AND validation, before the augmentations,
                                e.g. [{name: window, center: 400, width: 1800}] or {name: zscore};
                                `build_preprocess(data)` gives the same callable to evaluation/export
      val_patch_size: null      validation patch (null: whole image/volume; the models are fully convolutional)
      val_batch_size: null      validation batch size (null: batch_size)
    schedule:                   medtf.training.schedules
      {name: constant}                                           (default)
      {name: reduce_on_plateau, factor: 0.5, patience: 5, min_lr: 0, monitor: train.monitor}
      {name: cosine, warmup_epochs: 0 | warmup_steps: 0, min_lr: 0, warmup_from: 0}
    train:
      epochs (1), steps_per_epoch (null: the whole split), validation_steps (null), monitor / mode (the task's:
                                val_dice / max for segmentation, see medtf.tasks)
      precision: float32        or mixed_float16 / mixed_bfloat16 / auto (the global policy is restored afterwards)
      strategy: auto            auto | mirrored | one_device | multiworker (medtf.training.strategy); across
                                several workers batch norm is synchronized (one set of moving statistics) and
                                the validation split is sharded by example
      keep_worker_outputs: false  keep non-chief workers' checkpoints in run_dir/workers/ (to compare weights)
      jit_compile: false        XLA-compile the train step
      remat: false              rematerialisation (gradient checkpointing): models with a ``remat`` argument
                                (UNet, AttentionUNet) recompute each conv block in the backward pass; others are
                                built inside keras.RematScope("full") (see build_model and RESULTS.md "Memory")
      log_every_n_steps: 100    weight/gradient histograms and gradient flow every N optimizer steps (0: off)
      image_panels: true        [input | ground truth | prediction] panels when train.monitor improves
      hparams: true             TensorBoard HParams entry (flattened scalar config values + final metrics)
      verbose: auto             auto: Keras' progress bar per step on a terminal, one line per epoch in logs
                                (nothing with medtf --quiet); or 0 / 1 / 2 as Keras' fit(verbose=)
      layer_decay: null         ViT fine-tuning: block i of L at lr x decay^(L - i), embeddings decay^(L + 1),
                                head lr (medtf.training.layer_decay; BEiT uses 0.65-0.75)
      attention_every_n_epochs: 1  masked_modeling / nucleus_classification (needs image_panels): [CLS] attention
                                panels every N epochs (0: off) of block attention_block (-1: the last), per head
                                too with attention_per_head: false (medtf.tasks.attention_panels)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

import keras

from medtf.hpc.preemption import PreemptionCallback
from medtf.progress import keras_verbose
from medtf.runtime import resolve_precision
from medtf.training.callbacks import (HParamsLogger, LearningRateLogger, NanGuard, backup_epoch, best_so_far,
                                      nan_message, trim_history)
from medtf.training.class_shares import report_class_shares
from medtf.training.config import save_resolved
from medtf.training.experiment import (ExperimentConfig, ModelConfig, OptimizerConfig, TrainConfig,
                                       optimizer_class, parse_config, section)
from medtf.tasks import get_task
from medtf.training.diagnostics import GradientStats
from medtf.training.init_weights import write_report as write_init_report
from medtf.training.inputs import build_datasets, build_preprocess, probe_batches, steps_per_epoch, training_transforms
from medtf.training.schedules import build_learning_rate, schedule_callbacks
from medtf.training.transfer import apply_freeze, load_initial_weights
from medtf.training.strategy import (RunPaths, make_strategy, num_workers, run_paths, shard_by_example,
                                     synchronize_batch_norm)

__all__ = ["NonFiniteLossError", "NanGuard", "nan_message", "build_preprocess", "training_transforms",
           "build_datasets", "build_optimizer", "build_callbacks", "train"]


class NonFiniteLossError(RuntimeError):
    """Raised by `train` when `NanGuard` stopped a run because the loss became NaN / inf."""


def build_optimizer(opt: OptimizerConfig | Mapping, learning_rate=None) -> keras.optimizers.Optimizer:
    """The Keras optimizer ``optimizer.name`` (adamw, adam, sgd, ...) with ``learning_rate``, ``weight_decay`` and
    ``args``; ``learning_rate`` (a float or schedule) replaces the section's."""
    opt = section(OptimizerConfig, opt, "optimizer")
    if learning_rate is None:
        learning_rate = opt.learning_rate
    cls = optimizer_class(opt.name)
    return cls(learning_rate=learning_rate, weight_decay=opt.weight_decay, **opt.args)


def build_model(model_cfg: ModelConfig | Mapping, remat: bool = False) -> keras.Model:
    """`medtf.models.get_model` from the ``model`` section, rematerialised when ``remat`` is true.

    Block-level remat (the model's own ``remat=True``, e.g. :class:`medtf.models.UNet`) is preferred: it keeps
    only block inputs and is what makes mixed precision + remat fit (``benchmarks/RESULTS.md`` "Memory").
    Models without that argument are built inside ``keras.RematScope("full")``, which recomputes single layers
    and rarely saves memory in a conv chain.
    """
    from medtf.models import get_model

    model_cfg = section(ModelConfig, model_cfg, "model")
    name, args = model_cfg.name, dict(model_cfg.args)
    if not remat:
        return get_model(name, **args)
    try:
        return get_model(name, **{"remat": True, **args})
    except (TypeError, ValueError) as err:  # the model has no `remat` argument
        if "remat" not in str(err):
            raise
    with keras.RematScope(mode="full"):  # layers record the mode at construction; it applies at call time
        model = get_model(name, **args)
    # On the TensorFlow backend remat is tf.recompute_grad, whose custom gradient rejects keyword arguments in
    # graph mode: layers called with training=/mask= (the model itself, batch norm, dropout) would fail inside
    # fit. They keep their activations; convolutions (the memory) are recomputed.
    for op in [model, *model._flatten_layers(include_self=False), *getattr(model, "operations", [])]:
        if getattr(op, "_call_has_training_arg", False) or getattr(op, "_call_has_mask_arg", False):
            op._remat_mode = None
    return model


def _backup(paths: RunPaths):
    """PreemptionCallback: BackupAndRestore that also saves and stops on SIGUSR1 (SLURM's pre-timeout signal).

    Non-chief workers restore from the shared folder but never write or delete it: concurrent writes of one
    HDF5 file on a shared file system would corrupt it.
    """
    if paths.is_chief:
        return PreemptionCallback(str(paths.backup))

    class ReadOnlyBackup(PreemptionCallback):
        def _save_model(self):
            pass

    return ReadOnlyBackup(str(paths.backup), delete_checkpoint=False)


def build_callbacks(train_cfg: TrainConfig, schedule, paths: RunPaths, guard: NanGuard, resumed_rows: list,
                    probes=None, hparams: Mapping | None = None, task=None) -> list:
    """Callbacks in the order they must see each epoch's logs (LR into the logs before CSV/TensorBoard read
    them; the backup last, so a crash between CSV row and backup re-runs the epoch and `trim_history` drops it).

    ``train_cfg`` / ``schedule``: the typed sections; ``hparams``: the resolved config for the HParams entry;
    ``task``: adds its diagnostics (`medtf.tasks.Task.diagnostics`; default segmentation's image panels).
    """
    monitor, mode = train_cfg.monitor, train_cfg.mode
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    best = best_so_far(resumed_rows, monitor, mode)
    callbacks = [guard, LearningRateLogger(), *schedule_callbacks(schedule, monitor, mode),
                 keras.callbacks.TensorBoard(log_dir=str(paths.logs)),
                 keras.callbacks.CSVLogger(str(paths.history), append=bool(resumed_rows)),
                 keras.callbacks.ModelCheckpoint(str(paths.checkpoints / "best.keras"), monitor=monitor, mode=mode,
                                                 save_best_only=True, initial_value_threshold=best),
                 keras.callbacks.ModelCheckpoint(str(paths.checkpoints / "last.keras"))]
    if paths.is_chief and probes is not None:
        train_batch, val_examples = probes
        task = task if task is not None else get_task("segmentation")
        callbacks.extend(task.diagnostics(None, train_cfg, paths, best, val_examples))
        if train_cfg.log_every_n_steps > 0 and train_batch is not None:
            callbacks.append(GradientStats(paths.gradients, train_batch, train_cfg.log_every_n_steps))
    if paths.is_chief and train_cfg.hparams:
        callbacks.append(HParamsLogger(paths.logs, hparams or {}))
    callbacks.append(_backup(paths))
    return callbacks


def train(config: ExperimentConfig | Mapping, run_dir: str | os.PathLike) -> dict:
    """Train the model described by ``config`` and write everything into ``run_dir`` (resuming a backup there).

    ``config`` is an `ExperimentConfig` or its raw mapping, which is parsed and validated first
    (`medtf.training.experiment.parse_config`: a `ConfigError` before anything runs). ``run_dir/config.yaml``
    gets the resolved config: every default filled in, ``data.dir`` absolute, ``data.kind`` from the manifest.

    Returns ``{"history": {metric: [per-epoch values, resumed epochs included]}, "model", "strategy", "precision",
    "initial_epoch", "preempted", "run_dir", "config", "best", "last", "logs", "csv", "class_shares"}`` (paths as
    strings; class_shares: classification runs' `medtf.training.class_shares` report, also printed at the start and
    written to ``run_dir/class_shares.json``).
    Raises `NonFiniteLossError` when the loss went NaN/inf (see `NanGuard`). The global mixed-precision policy is
    restored on exit, also on error.

    Example:
        >>> result = train(load_config("experiments/lgg_unet2d.yaml", ["train.epochs=2"]), "runs/lgg")
    """
    from medtf.data.manifest import read_manifest

    experiment = parse_config(config)
    if experiment.data.kind is None:  # resolved: `medtf export` needs no shard folder to know the kind
        kind = read_manifest(experiment.data.dir)["kind"]
        experiment = experiment.replace(data=experiment.data.replace(kind=kind))
    data, train_cfg, schedule = experiment.data, experiment.train, experiment.schedule
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = experiment.seed
    # "auto": bfloat16 only where the hardware computes it natively, float16 on older GPUs (medtf.runtime).
    policy = resolve_precision(train_cfg.precision)
    epochs = train_cfg.epochs

    previous = keras.mixed_precision.global_policy().name
    paths = None
    try:
        # MultiWorkerMirroredStrategy must exist before other TF work starts.
        strategy = make_strategy(train_cfg.strategy)
        paths = run_paths(run_dir, strategy, train_cfg.keep_worker_outputs)
        # What the model needs from the training data before it exists (text tasks: the WordPiece vocabulary).
        experiment = get_task(experiment.task).prepare(experiment, run_dir)
        if paths.is_chief:
            save_resolved(experiment.as_dict(), run_dir)
        if seed is not None:
            keras.utils.set_random_seed(int(seed))
        keras.mixed_precision.set_global_policy(policy)
        initial_epoch = backup_epoch(paths.backup)
        resumed_rows = trim_history(paths.history, initial_epoch) if paths.is_chief else []
        task = get_task(experiment.task).configure(experiment)  # its own settings, e.g. MIM token targets
        # null: the whole training split (the training set repeats forever, so Keras needs the count)
        steps = steps_per_epoch(data, train_cfg)
        learning_rate = build_learning_rate(schedule, experiment.optimizer.learning_rate, steps, epochs)
        with strategy.scope():
            model = build_model(experiment.model, train_cfg.remat)
            if experiment.model.init_from:  # transfer learning (medtf.training.transfer); a backup overrides it
                carried = load_initial_weights(model, experiment.model.init_from, experiment.model.carry,
                                               strict=experiment.model.init_from_strict)
                if paths.is_chief:  # the summary line, and the whole report in RUN_DIR/init_from.json
                    print(carried["summary"], flush=True)
                    write_init_report(carried, run_dir)
            apply_freeze(model, experiment.model.freeze_blocks, experiment.model.freeze_up_to)  # before compile
            if num_workers(strategy) > 1:  # else each worker keeps its own moving statistics
                synchronize_batch_norm(model)
            # The task's defaults: loss "auto", its metrics (and one loss per head for deep supervision).
            optimizer = build_optimizer(experiment.optimizer, learning_rate)
            if train_cfg.layer_decay is not None:  # per-block learning rates for ViT fine-tuning
                from medtf.training.layer_decay import apply_layer_decay

                apply_layer_decay(optimizer, model, train_cfg.layer_decay)
            task.compile(model, optimizer, loss=experiment.loss.as_dict(), jit_compile=train_cfg.jit_compile)
        # The task maps the kind's parsed examples to (inputs, targets) shaped for this model's heads.
        to_model = task.model_inputs(model)
        train_ds, val_ds = build_datasets(data, strategy, seed=experiment.data_seed, model_inputs=to_model)
        shares = None
        if paths.is_chief and experiment.task == "classification":  # the classes the model will see
            shares = report_class_shares(data, run_dir)
        val_ds = shard_by_example(val_ds, strategy)
        wants_probes = train_cfg.image_panels or train_cfg.log_every_n_steps > 0
        probes = probe_batches(data, model_inputs=to_model, panel_inputs=task.model_inputs()) \
            if paths.is_chief and wants_probes else None
        guard = NanGuard(policy)
        callbacks = build_callbacks(train_cfg, schedule, paths, guard, resumed_rows, probes,
                                    hparams=experiment.as_dict(), task=task)
        callbacks[:0] = task.callbacks(model, paths)  # first: they see each step before the others do
        fit = model.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps,
                        validation_steps=train_cfg.validation_steps, callbacks=callbacks,
                        shuffle=False,  # make_dataset already shuffles (files and examples, seeded)
                        verbose=keras_verbose(train_cfg.verbose))
        if guard.message:
            raise NonFiniteLossError(guard.message)
    finally:
        keras.mixed_precision.set_global_policy(previous)
        if paths is not None and paths.scratch is not None:  # a non-chief worker's throw-away checkpoints
            shutil.rmtree(paths.scratch, ignore_errors=True)
    history = {k: [float(r[k]) for r in resumed_rows if r.get(k) not in (None, "", "NA")] + [float(v) for v in vals]
               for k, vals in fit.history.items()}
    ckpt = run_dir / "checkpoints"
    return {"history": history, "model": model, "strategy": strategy, "initial_epoch": initial_epoch, "precision": policy,
            "preempted": bool(getattr(callbacks[-1], "preempted", False)), "run_dir": str(run_dir),
            "config": str(run_dir / "config.yaml"), "best": str(ckpt / "best.keras"),
            "last": str(ckpt / "last.keras"), "logs": str(run_dir / "logs"), "csv": str(run_dir / "history.csv"),
            "class_shares": shares}
