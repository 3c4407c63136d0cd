"""The `Task` base: defaults a task gives the engine, evaluation, export and predict (see `medtf.tasks`)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import keras


def main_output(outputs):
    """Deep-supervision / multi-head models return ``[main, aux...]`` (or a dict): the first is the main head."""
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    if isinstance(outputs, Mapping):
        return next(iter(outputs.values()))
    return outputs


class Task:
    """What a model is trained for. Subclasses set ``name`` and ``fields`` and override the hooks.

    ``compile(model, optimizer, loss="auto", metrics="auto")`` compiles with the task's defaults (a loss name or
    instance / a metric list replaces them), as keras-hub ``Task.compile``.
    """

    name: str = ""
    fields: Sequence[str] = ()
    default_loss_args: Sequence[str] = ()  # loss.args that loss.name "auto" accepts (`default_loss` keywords)

    # === Data ===
    def configure(self, experiment) -> "Task":
        """Take the task's own settings from the parsed experiment (e.g. masked_modeling's ``targets``); the
        engine calls it once before `model_inputs`. Returns the task."""
        return self

    def prepare(self, experiment, run_dir):
        """Called by ``medtf train`` before the model is built: the experiment completed with what must be computed
        from the training data first (the text tasks' vocabulary, `medtf.tasks.text_prep`); unchanged here."""
        return experiment

    def check_fields(self, example: Mapping) -> None:
        missing = [f for f in self.fields if f not in example]
        if missing:
            raise ValueError(f"task {self.name!r} needs the fields {list(self.fields)} in every example; the data "
                             f"kind provides {sorted(example)} (missing {missing})")

    def model_inputs(self, model: keras.Model | None = None) -> Callable[[dict], Any]:
        """``parsed example -> (x, y)`` as ``fit`` consumes it (``model``: shapes targets to its outputs)."""
        raise NotImplementedError

    # === Compile ===
    def default_loss(self, model: keras.Model):
        raise NotImplementedError

    def default_metrics(self, model: keras.Model) -> Any:
        return []

    def build_loss(self, loss: Any, model: keras.Model):
        """``"auto"`` -> `default_loss`; a name (medtf's or Keras' own) -> `medtf.losses.get_loss`; else as is."""
        from medtf.losses import get_loss

        if loss is None or (isinstance(loss, str) and loss == "auto"):
            return self.default_loss(model)
        if isinstance(loss, str):
            return get_loss(loss)
        if isinstance(loss, Mapping):  # {"name": ..., "args": {...}} as the config's loss section
            name, args = loss.get("name", "auto"), dict(loss.get("args") or {})
            # "auto" takes the task's `default_loss_args` only (checked by parse_config)
            return self.default_loss(model, **args) if name == "auto" else get_loss(name, **args)
        return loss

    def compile(self, model: keras.Model, optimizer, loss: Any = "auto", metrics: Any = "auto", **kwargs) -> None:
        metrics = self.default_metrics(model) if isinstance(metrics, str) and metrics == "auto" else metrics
        model.compile(optimizer=optimizer, loss=self.build_loss(loss, model), metrics=metrics, **kwargs)

    # === Diagnostics, evaluation, export, predict ===
    def diagnostics(self, data, train_cfg, paths, best, model_inputs) -> list:
        """TensorBoard callbacks beyond scalars (chief only); none by default."""
        return []

    def callbacks(self, model: keras.Model, paths) -> list:
        """Training callbacks of every worker (``paths``: `medtf.training.strategy.RunPaths`); none by default."""
        return []

    def evaluate(self, run_dir, **kwargs) -> dict:
        raise NotImplementedError(f"task {self.name!r} has no evaluator")

    def export(self, run_dir, **kwargs):
        raise NotImplementedError(f"task {self.name!r} has no exporter")

    def predict(self, model_dir, input_path, output, **kwargs) -> dict:
        raise NotImplementedError(f"task {self.name!r} has no predict writer")
