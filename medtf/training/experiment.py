"""The experiment config as typed sections (tf/models ``official/core/config_definitions.py``), parsed once.

    experiment = load_experiment("experiments/lgg_unet2d.yaml", ["train.epochs=5"])   # ExperimentConfig
    experiment.train.epochs, experiment.data.batch_size, experiment.schedule.name

`parse_config` turns the raw mapping (an experiment file plus ``--set`` overrides, see `medtf.training.config`)
into an `ExperimentConfig` and validates it before anything runs: unknown keys anywhere are errors with a
did-you-mean suggestion, every value has the type its field declares, and the registry names (``model.name``,
``loss.name``, ``optimizer.name``, ``schedule.name``, every transform's ``name``) exist, with ``model.args``,
``loss.args`` and the transforms' keyword arguments checked against the constructor's signature. The parts of the
engine then each take their own section (`medtf.training.inputs` the ``data`` section, `medtf.training.schedules`
the ``schedule``, ...). ``ExperimentConfig.as_dict()`` is the plain resolved config written into the run directory
(every default filled in, ``data.dir`` absolute): `medtf train` accepts it again, from any working directory.

Sections and defaults (``medtf/training/engine.py`` describes what each key does)::

    data:      dir (required), batch_size (required), kind (null: the manifest's), train_split (train),
               val_split (val; null: no validation), fold, folds (null), selection_fold (inner | outer: with
               ``fold: k``, which fold chooses checkpoints, `medtf.data.manifest.nested_fold_splits`),
               patch_size, val_patch_size (null),
               val_batch_size (null: batch_size), transforms ([]), preprocess ([]), seed (null: the top-level seed),
               service (null | grpc://host:port | auto: tf.data service for the training set, medtf.data.service),
               service_mode (distributed_epoch | parallel_epochs), service_timeout (300 s), mosaic (null |
               {size, min_visible}: nuclei-he training crops across 2 x 2 neighbouring tiles, medtf.data.mosaic)
    model:     name (required), args ({}: the model's constructor arguments), init_from (null), carry (all |
               backbone), init_from_strict (true), freeze_blocks ([]), freeze_up_to (null)
    task:      segmentation (default) | classification | contrastive | masked_modeling (`medtf.tasks`)
    loss:      name (auto: the task's default; a medtf loss or a Keras one such as binary_crossentropy), args ({})
    optimizer: name (adamw; any Keras optimizer: adam, sgd, rmsprop, ...), learning_rate (0.001),
               weight_decay (0.0001; null: none), args ({}: the optimizer's other arguments)
    schedule:  one of {name: constant} | {name: reduce_on_plateau, factor, patience, min_lr, monitor, mode,
               min_delta, cooldown, verbose} | {name: cosine, warmup_epochs | warmup_steps, min_lr, warmup_from}
    train:     epochs (1), steps_per_epoch, validation_steps (null), monitor / mode (the task's: val_dice / max
               for segmentation, val_auc / max for classification, val_loss / min for contrastive),
               precision (float32), strategy (auto), keep_worker_outputs, jit_compile, remat (false),
               log_every_n_steps (100), image_panels, hparams (true), verbose (auto), warmup_image_epochs (0:
               task contrastive trains the image tower alone for that many epochs, `medtf.tasks.clip_warmup`),
               val_retrieval (true: task contrastive logs whole-val-split val_retrieval_recall_at_1 / _at_5 /
               _mrr and val_zero_shot_accuracy each epoch, monitorable, `medtf.tasks.clip_monitor`),
               attention_every_n_epochs (1; 0: off) / attention_block (-1) / attention_per_head (false): [CLS]
               attention panels of the ViT tasks (`medtf.tasks.attention_panels`)
    seed:      null
    tune:      null (checked by `medtf.tuning.settings.tune_settings`)
    transfer:  null, or {phases: [{name, <section overrides>}, ...], compare_scratch: false}: a transfer-learning
               chain run by `medtf train` (`medtf.training.transfer`)
    targets:   null, or {tokenizer: RUN_DIR | exported model, cache: false}: token targets of task masked_modeling
               from a trained tokenizer (`medtf.tasks.token_targets`)
    evaluate:  null, or {zero_shot: {prompts: {CLASS: TEXT or [TEXT, ...], ...}}, linear_probe: true | false |
               {c: 1.0}}: what
               `medtf evaluate` of a contrastive run adds to retrieval (`medtf.evaluation.retrieval`)
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from medtf.training.config import ConfigError, load_config
from medtf.training.hyperparams import Config, at_least, check_value, choice, did_you_mean, unknown_name

STRATEGIES = ("auto", "mirrored", "one_device", "multiworker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto", "float16", "bfloat16", "float64")
# Keras optimizers by name (`keras.optimizers.get`); every one takes learning_rate and weight_decay.
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "ftrl", "lion", "lamb",
              "adafactor")
# Keyword arguments every Keras model / loss takes through **kwargs.
_MODEL_KWARGS, _LOSS_KWARGS = ("name", "dtype", "trainable"), ("name", "reduction", "dtype")
_OPTIMIZER_KWARGS = ("clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum", "ema_overwrite_frequency",
                     "loss_scale_factor", "gradient_accumulation_steps", "name")


# === Sections ===

def _transform_list(raw: Any, key: str) -> list[dict]:
    """``[{name, **kwargs}, ...]``; a single mapping is a list of one (``preprocess: {name: zscore}``)."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        raw = [raw]
    entries = check_value(raw, list[dict], key)
    for i, entry in enumerate(entries):
        if not isinstance(entry.get("name"), str):
            raise ConfigError(f"{key}[{i}]: a transform needs a name, e.g. {{name: random_flip}}, got {entry!r}")
    return entries


def _class_balance(raw: Any, key: str) -> dict | None:
    """null, or ``{method: oversample, weights: {0: 1, 1: 1} | inverse_frequency}`` / ``{method:
    augmentation_factor, factor: 4, minority: 1}`` (`medtf.data.balance`), checked here."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping such as {{method: oversample, weights: {{0: 1, 1: 1}}}}, "
                          f"got {raw!r}")
    from medtf.data.balance import validate_class_balance

    try:
        return validate_class_balance(raw)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _targets(raw: Any, key: str):
    from medtf.tasks.token_targets import parse_targets

    return parse_targets(raw, key)


def _evaluate(raw: Any, key: str):
    from medtf.evaluation.retrieval import parse_evaluate_settings

    try:
        return parse_evaluate_settings(raw, key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _patch_size(raw: Any, key: str) -> Any:
    """null, an int, one int per spatial axis, or a sampler ``{name: random_patch, size: ..., ...}``."""
    if raw is None or isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
        return None if raw is None else dict(raw)
    try:
        return check_value(raw, int | list[int], key)
    except ConfigError:
        raise ConfigError(f"{key}: expected null, an integer, a list of integers or a sampler like "
                          f"{{name: random_patch, size: [...]}}, got {raw!r}") from None


@dataclass
class DataConfig(Config):
    dir: str
    batch_size: int
    kind: str | None = None
    train_split: str | list[str] = "train"
    val_split: str | None = "val"
    fold: int | None = None
    folds: int | None = None
    # With ``fold: k``: ``inner`` chooses on fold (k+1) mod K and trains on the other K-2 folds, so fold k is
    # scored by a model never chosen on it; ``outer`` chooses on fold k itself (optimistic; the old behaviour).
    selection_fold: str = "inner"
    patch_size: Any = field(default=None, metadata={"parse": _patch_size})
    val_patch_size: Any = field(default=None, metadata={"parse": _patch_size})
    val_batch_size: int | None = None
    transforms: list[dict] = field(default_factory=list, metadata={"parse": _transform_list})
    preprocess: list[dict] = field(default_factory=list, metadata={"parse": _transform_list})
    class_balance: dict | None = field(default=None, metadata={"parse": _class_balance})  # training split only
    seed: int | None = None
    service: str | None = None  # training set only; validation stays in-process (no augmentation to move)
    service_mode: str = "distributed_epoch"
    service_timeout: float = 300.0
    # training split only: nuclei-he crops from 2 x 2 neighbouring tiles, {size, min_visible} (medtf.data.mosaic)
    mosaic: dict | None = None

    def __post_init__(self):
        # Stored absolute: a run directory's config.yaml must work from any working directory.
        self.dir = os.path.abspath(os.path.expanduser(self.dir))

    def check(self, path: str) -> None:
        at_least(self.batch_size, 1, f"{path}.batch_size")
        at_least(self.val_batch_size, 1, f"{path}.val_batch_size")
        from medtf.data.service import SERVICE_MODES, normalize_address

        choice(self.service_mode, SERVICE_MODES, f"{path}.service_mode", "service mode")
        if self.mosaic is not None:
            from medtf.data.mosaic import KEYS

            unknown = sorted(set(self.mosaic) - set(KEYS))
            if unknown:
                raise ConfigError(f"{path}.mosaic.{unknown[0]}: unknown key; mosaic takes {', '.join(KEYS)}")
        from medtf.data.manifest import SELECTION_FOLDS

        choice(self.selection_fold, SELECTION_FOLDS, f"{path}.selection_fold", "selection fold")
        if self.service not in (None, "auto"):
            try:
                normalize_address(self.service)
            except ValueError as exc:
                raise ConfigError(f"{path}.service: {exc} (or auto, or null)") from None


@dataclass
class ModelConfig(Config):
    """``name`` + ``args``; transfer learning (`medtf.training.transfer`): ``init_from`` (a ``.keras`` checkpoint,
    a ``.weights.h5`` file or a run directory, meaning its ``checkpoints/best.keras``), ``carry`` (``all``: every
    layer whose weights fit, the head too when the classes match; ``backbone``: all but the output layer),
    ``init_from_strict`` (true: every layer but the head must carry over, paired by name;
    `medtf.training.init_weights`) and the layers frozen for training (``freeze_blocks: [block1, ...]`` or
    ``freeze_up_to: LAYER_OR_BLOCK``; frozen batch norm runs in inference mode)."""

    name: str
    args: dict = field(default_factory=dict)
    init_from: str | None = None
    carry: str = "all"
    # false: copy what fits and report the rest (medtf.training.init_weights); true: a backbone layer that does
    # not carry over is an error
    init_from_strict: bool = True
    freeze_blocks: list[str] = field(default_factory=list)
    freeze_up_to: str | None = None

    def __post_init__(self):
        if self.init_from is not None:  # absolute, as data.dir: config.yaml must work from any directory
            self.init_from = os.path.abspath(os.path.expanduser(self.init_from))

    def check(self, path: str) -> None:
        choice(self.carry, ("all", "backbone"), f"{path}.carry", "carry mode")
        if self.freeze_blocks and self.freeze_up_to is not None:
            raise ConfigError(f"{path}: give freeze_blocks or freeze_up_to, not both")


@dataclass
class LossConfig(Config):
    """``name``: ``auto`` (the task's default), a medtf loss or a Keras one (``binary_crossentropy``, ...)."""

    name: str = "auto"
    args: dict = field(default_factory=dict)


@dataclass
class OptimizerConfig(Config):
    """Any Keras optimizer by name (``adamw``, ``adam``, ``sgd``, ...); ``args``: its other arguments
    (``momentum``, ``beta_1``, ...)."""

    name: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float | None = 1e-4
    args: dict = field(default_factory=dict)

    def check(self, path: str) -> None:
        choice(self.name.lower(), OPTIMIZERS, f"{path}.name", "optimizer")
        if self.learning_rate <= 0:
            raise ConfigError(f"{path}.learning_rate: must be > 0, got {self.learning_rate}")


@dataclass
class ConstantSchedule(Config):
    """``optimizer.learning_rate`` throughout."""

    name: str = "constant"


@dataclass
class PlateauSchedule(Config):
    """`keras.callbacks.ReduceLROnPlateau`; ``monitor`` / ``mode`` null: ``train.monitor`` / ``train.mode``."""

    name: str = "reduce_on_plateau"
    factor: float = 0.5
    patience: int = 5
    min_lr: float = 0.0
    monitor: str | None = None
    mode: str | None = None
    min_delta: float = 1e-4
    cooldown: int = 0
    verbose: int = 0

    def check(self, path: str) -> None:
        if not 0 < self.factor < 1:
            raise ConfigError(f"{path}.factor: must be between 0 and 1, got {self.factor}")
        if self.mode is not None:
            choice(self.mode, ("max", "min", "auto"), f"{path}.mode", "mode")


@dataclass
class CosineSchedule(Config):
    """Linear warm-up then cosine decay (`medtf.training.schedules.warmup_cosine`)."""

    name: str = "cosine"
    warmup_epochs: float | None = None
    warmup_steps: int | None = None
    min_lr: float = 0.0
    warmup_from: float = 0.0

    def check(self, path: str) -> None:
        if self.warmup_epochs is not None and self.warmup_steps is not None:
            raise ConfigError(f"{path}: give schedule.warmup_steps or schedule.warmup_epochs, not both")
        at_least(self.warmup_epochs, 0, f"{path}.warmup_epochs")
        at_least(self.warmup_steps, 0, f"{path}.warmup_steps")
        at_least(self.min_lr, 0, f"{path}.min_lr")


SCHEDULES = {"constant": ConstantSchedule, "reduce_on_plateau": PlateauSchedule, "cosine": CosineSchedule}
Schedule = ConstantSchedule | PlateauSchedule | CosineSchedule


def parse_schedule(raw: Any, key: str = "schedule") -> Schedule:
    """The ``schedule`` section as the dataclass its ``name`` selects (None: constant)."""
    if isinstance(raw, tuple(SCHEDULES.values())):
        return raw
    if raw is None:
        return ConstantSchedule()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping like {{name: cosine, warmup_epochs: 1}}, got {raw!r}")
    name = check_value(raw.get("name", "constant"), str, f"{key}.name").lower()
    if name not in SCHEDULES:
        raise unknown_name(f"{key}.name", "schedule", name, SCHEDULES)
    return SCHEDULES[name].from_dict({**raw, "name": name}, key)


@dataclass
class TrainConfig(Config):
    epochs: int = 1
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    monitor: str = "val_dice"
    mode: str = "max"
    precision: str = "float32"
    strategy: str = "auto"
    keep_worker_outputs: bool = False
    jit_compile: bool = False
    remat: bool = False
    warmup_image_epochs: int = 0  # task contrastive: report tower frozen for the first N epochs
    val_retrieval: bool = True  # task contrastive: whole-val-split retrieval / zero-shot in the logs each epoch
    log_every_n_steps: int = 100
    image_panels: bool = True
    hparams: bool = True
    verbose: int | str = "auto"
    layer_decay: float | None = None  # ViT fine-tuning: block i's lr x decay^(L - i) (medtf.training.layer_decay)
    # ViT tasks: [CLS] attention panels every N epochs (0: off), of this block (-1: last), per head too
    attention_every_n_epochs: int = 1
    attention_block: int = -1
    attention_per_head: bool = False

    def check(self, path: str) -> None:
        at_least(self.epochs, 1, f"{path}.epochs")
        at_least(self.steps_per_epoch, 1, f"{path}.steps_per_epoch")
        at_least(self.validation_steps, 1, f"{path}.validation_steps")
        at_least(self.log_every_n_steps, 0, f"{path}.log_every_n_steps")
        at_least(self.warmup_image_epochs, 0, f"{path}.warmup_image_epochs")
        at_least(self.attention_every_n_epochs, 0, f"{path}.attention_every_n_epochs")
        choice(self.mode, ("max", "min"), f"{path}.mode", "mode")
        choice(self.precision, PRECISIONS, f"{path}.precision", "precision")
        self.strategy = self.strategy.lower()
        choice(self.strategy, STRATEGIES, f"{path}.strategy", "strategy")
        choice(self.verbose, ("auto", 0, 1, 2), f"{path}.verbose", "verbosity")
        if self.layer_decay is not None and not 0.0 < float(self.layer_decay) <= 1.0:
            raise ConfigError(f"{path}.layer_decay must be in (0, 1] (null: off), got {self.layer_decay}")


@dataclass
class ExperimentConfig(Config):
    """One experiment: the sections above plus the top-level ``seed`` and the optional ``tune`` section."""

    data: DataConfig
    model: ModelConfig
    loss: LossConfig = field(default_factory=LossConfig)
    task: str = "segmentation"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: Schedule = field(default_factory=ConstantSchedule, metadata={"parse": parse_schedule})
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int | None = None
    tune: dict | None = None
    transfer: dict | None = None
    targets: Any = field(default=None, metadata={"parse": _targets})
    evaluate: Any = field(default=None, metadata={"parse": _evaluate})

    @classmethod
    def from_dict(cls, raw, path: str = ""):
        """Parse; ``task`` is checked first and ``train.monitor`` / ``train.mode`` default to the task's."""
        return super().from_dict(_with_task_defaults(raw), path)

    def as_dict(self) -> dict:
        """The resolved config; no ``tune`` / ``transfer`` key unless the experiment has a search / phases (a
        trial's or a phase's run has none)."""
        out = super().as_dict()
        for key in ("tune", "transfer", "targets", "evaluate"):
            if out[key] is None:
                del out[key]
        return out

    @property
    def data_seed(self) -> int | None:
        """``data.seed``, else the experiment's ``seed``."""
        return self.data.seed if self.data.seed is not None else self.seed

    def check(self, path: str) -> None:
        if self.targets is not None and self.task != "masked_modeling":
            raise ConfigError(f"targets: token targets are for task masked_modeling, this experiment's task is "
                              f"{self.task}")
        if self.evaluate is not None and self.task != "contrastive":
            raise ConfigError(f"evaluate: zero-shot prompts and linear probes are for task contrastive, this "
                              f"experiment's task is {self.task}")
        warmup = self.train.warmup_image_epochs
        if warmup and (self.task != "contrastive" or warmup >= self.train.epochs):
            raise ConfigError(f"train.warmup_image_epochs: {warmup} image-only epochs need task contrastive (this "
                              f"experiment's: {self.task}) and fewer than train.epochs ({self.train.epochs})")
        if self.train.monitor.startswith(("val_retrieval_", "val_zero_shot_")) and not (
                self.task == "contrastive" and self.train.val_retrieval
                and (self.data.val_split is not None or self.data.fold is not None)):
            raise ConfigError(f"train.monitor: {self.train.monitor} is logged by task contrastive with "
                              f"train.val_retrieval true and a data.val_split (this experiment: task {self.task}, "
                              f"val_retrieval {self.train.val_retrieval}, val_split {self.data.val_split})")
        lr = self.optimizer.learning_rate
        if isinstance(self.schedule, CosineSchedule) and self.schedule.min_lr > lr:
            raise ConfigError(f"schedule.min_lr ({self.schedule.min_lr}) is above optimizer.learning_rate ({lr}): "
                              f"the cosine schedule decays from the learning rate down to min_lr")


def _with_task_defaults(raw: Any) -> Any:
    """``raw`` with ``train.monitor`` / ``train.mode`` filled from its ``task`` (`medtf.tasks.default_monitor`)
    where the config leaves them out; a mode left out for a monitor given is ``min`` for losses, else ``max``."""
    from medtf.tasks import default_monitor, task_names

    if not isinstance(raw, Mapping):
        return raw
    task = raw.get("task", "segmentation")
    if not isinstance(task, str) or task not in task_names():
        raise unknown_name("task", "task", task, task_names())
    train = raw.get("train") or {}
    if not isinstance(train, Mapping) or ("monitor" in train and "mode" in train):
        return raw
    train = dict(train)
    args = (raw.get("model") or {}).get("args") if isinstance(raw.get("model"), Mapping) else None
    monitor, mode = default_monitor(task, args if isinstance(args, Mapping) else None)
    if "monitor" in train:
        mode = "min" if str(train["monitor"]).endswith("loss") else "max"
    train.setdefault("monitor", monitor)
    train.setdefault("mode", mode)
    return {**raw, "train": train}


def section(cls, value: Any, path: str):
    """``value`` as section ``cls``: returned as is when it already is one, else parsed (mapping or None)."""
    if cls is Schedule or cls in SCHEDULES.values():
        return parse_schedule(value, path)
    return value if isinstance(value, cls) else cls.from_dict(value, path)


# === Registries: names and constructor arguments ===

def _arguments(fn, extra: Iterable[str] = ()) -> tuple[list[str], bool]:
    """Keyword names ``fn`` accepts and whether it takes arbitrary ones (``**kwargs`` with no known extras)."""
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    if var_kw and extra:
        return names + list(extra), False
    return names, var_kw


def check_arguments(fn, kwargs: Mapping, key: str, owner: str, extra: Iterable[str] = (),
                    required: bool = False) -> None:
    """Every keyword of ``kwargs`` must be an argument of ``fn``; with ``required`` missing ones are named too."""
    names, anything = _arguments(fn, extra)
    if not anything:
        for name in kwargs:
            if name not in names:
                raise ConfigError(f"{key}.{name}: not an argument of {owner}{did_you_mean(name, names)}; "
                                  f"its arguments: {', '.join(names) or '(none)'}")
    if required:
        try:
            inspect.signature(fn).bind(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{key}: {owner}: {exc}") from None


def _check_transforms(entries: list[dict], key: str) -> None:
    from medtf.transforms import registered_transforms
    from medtf.transforms.base import _REGISTRY  # the factories, for their signatures

    known = registered_transforms()
    for i, entry in enumerate(entries):
        name = entry["name"]
        if name not in known:
            raise unknown_name(f"{key}[{i}].name", "transform", name, known)
        kwargs = {k: v for k, v in entry.items() if k != "name"}
        check_arguments(_REGISTRY[name], kwargs, f"{key}[{i}]", f"transform {name}", required=True)


def optimizer_class(name: str):
    """The Keras optimizer class ``name`` (case-insensitive, e.g. ``adamw`` -> `keras.optimizers.AdamW`).

    Looked up, not instantiated: creating an optimizer creates a variable, which initialises TensorFlow's eager
    context, after which MultiWorkerMirroredStrategy can no longer configure its collective ops (configs are
    checked before the engine creates the strategy).
    """
    import keras

    classes = {cls.__name__.lower(): cls for cls in vars(keras.optimizers).values()
               if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)}
    try:
        return classes[name.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}") from None


def check_components(experiment: ExperimentConfig) -> None:
    """Registry names and constructor arguments of the model, the loss and every transform (imports them)."""
    from medtf.losses import list_losses, loss_class
    from medtf.models import list_models
    from medtf.models.registry import model_constructor

    model = experiment.model
    if model.name not in list_models():
        raise unknown_name("model.name", "model", model.name, list_models())
    check_arguments(model_constructor(model.name), model.args, "model.args", f"model {model.name}", _MODEL_KWARGS)
    loss = experiment.loss
    if loss.name == "auto":
        from medtf.tasks import get_task

        allowed = tuple(get_task(experiment.task).default_loss_args)
        extra = sorted(set(loss.args) - set(allowed))
        if extra:
            raise ConfigError(f"loss.args.{extra[0]}: the task's default loss (loss.name: auto) takes "
                              f"{', '.join(allowed) if allowed else 'no arguments'}; name the loss for others")
    elif loss.name.lower() not in list_losses():
        raise unknown_name("loss.name", "loss", loss.name, list_losses())
    else:
        check_arguments(loss_class(loss.name), loss.args, "loss.args", f"loss {loss.name}", _LOSS_KWARGS)
    optimizer = experiment.optimizer
    check_arguments(optimizer_class(optimizer.name), optimizer.args, "optimizer.args",
                    f"optimizer {optimizer.name}", _OPTIMIZER_KWARGS)
    for reserved in ("learning_rate", "weight_decay"):
        if reserved in optimizer.args:
            raise ConfigError(f"optimizer.args.{reserved}: set optimizer.{reserved} instead")
    data = experiment.data
    _check_transforms(data.preprocess, "data.preprocess")
    _check_transforms(data.transforms, "data.transforms")
    for name in ("patch_size", "val_patch_size"):
        if isinstance(getattr(data, name), Mapping):
            _check_transforms([getattr(data, name)], f"data.{name}")


# === Entry points ===

def parse_config(raw: Mapping | ExperimentConfig, *, components: bool = True) -> ExperimentConfig:
    """Parse and validate a raw experiment mapping (see the module docstring); ``components=False`` skips the
    registry checks (no TensorFlow import: for reading finished run directories)."""
    if isinstance(raw, ExperimentConfig):
        return raw
    experiment = ExperimentConfig.from_dict(raw)
    if components:
        check_components(experiment)
    if experiment.tune is not None:
        from medtf.tuning.settings import tune_settings

        tune_settings(experiment)
    if experiment.transfer is not None:
        from medtf.training.transfer import transfer_phases

        transfer_phases(experiment)  # every phase's merged config parses
    return experiment


def section_fields(section: str) -> frozenset[str]:
    """The settings the typed schema has under a top-level section (empty for free-form or unknown sections)."""
    from dataclasses import fields

    cls = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optimizer": OptimizerConfig,
           "train": TrainConfig}.get(section)
    return frozenset(f.name for f in fields(cls)) if cls is not None else frozenset()


def load_experiment(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """`medtf.training.config.load_config` (the file plus dotted overrides), parsed by `parse_config`."""
    return parse_config(load_config(path, overrides))
