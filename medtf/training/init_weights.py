"""``model.init_from``: copy another model's weights into a new model, layer by layer **by name**, with a report.

Layers are paired by their *key*: the names of the nested models down to the layer, below the top-level model
(``backbone/block3_attention``), so a masked-modelling run and a nucleus classifier meet in their ``backbone``
whatever their heads are, and a layer the target has but the source lacks (nucleus tokens, a new head) does not
shift every later pair, as pairing in network order did (a MIM run without nucleus tokens then copied only the
layers before the first nucleus layer into a nucleus model and skipped the rest silently).

Auto-generated names (``conv2d_7``: Keras counts layers per process, so two builds of one architecture differ)
get a stable key instead: their class and their rank among the auto-named layers of that class in the same
parent model (``conv2d#3``). A pair is copied when both layers have the same type and weight shapes.

The report (``copied`` / ``skipped`` / ``missing`` / ``unused`` layer names, a one-line ``summary``):

- copied: the target's layers that received the source's weights;
- skipped: the target's layers with a source layer of the same key that does not fit (type or weight shapes),
  and the target's output layer (the head) with ``carry="backbone"``;
- missing: the target's weight layers the source does not have;
- unused: the source's weight layers no target layer takes (e.g. the MIM heads).

Strict (``model.init_from_strict: true``, the default): every weight layer of the target except its output
layer (the head: a different class count is legitimate, ``carry="all"`` copies it when it fits) must be copied,
else a ValueError names each layer and why. Non-strict copies what fits and reports the rest (a deliberate
partial start, e.g. a MIM run without nucleus tokens into a nucleus model: the nucleus layers start from their
initialisation). With nothing copied at all it is an error in both modes: a wrong ``init_from`` must not
silently train from scratch.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import keras

__all__ = ["keyed_layers", "load_initial_weights", "source_model", "write_report"]

log = logging.getLogger(__name__)


def _snake(class_name: str) -> str:
    """Keras' ``to_snake_case`` (the prefix of its auto-generated layer names)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def keyed_layers(model: keras.Model, prefix: str = "") -> dict[str, keras.layers.Layer]:
    """``{key: layer}`` of every weight-bearing leaf layer of ``model`` in network order (nested models walked
    into; see the module docstring for the keys)."""
    out, ranks = {}, {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        snake = _snake(type(layer).__name__)
        name = layer.name
        if re.fullmatch(rf"{re.escape(snake)}(_\d+)?", name):  # auto-generated: stable per build
            ranks[snake] = ranks.get(snake, -1) + 1
            name = f"{snake}#{ranks[snake]}"
        if isinstance(layer, keras.Model):
            out.update(keyed_layers(layer, f"{prefix}{name}/"))
        elif layer.weights:
            out[f"{prefix}{name}"] = layer
    return out


def source_model(source: str | os.PathLike) -> keras.Model:
    path = Path(source)
    if path.is_dir():
        path = path / "checkpoints" / "best.keras"
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: {path} does not exist (a .keras checkpoint, a .weights.h5 file "
                                f"or a run directory with checkpoints/best.keras)")
    return keras.saving.load_model(path, compile=False)


def _shapes(layer) -> list[tuple]:
    return [tuple(w.shape) for w in layer.weights]


def load_initial_weights(model: keras.Model, source: str | os.PathLike, carry: str = "all",
                         strict: bool = True) -> dict:
    """Copy weights from ``source`` (a ``.keras`` file, a run directory or a ``.weights.h5``) into ``model``.

    Returns the report ``{"copied", "skipped", "missing", "unused": [layer names], "summary": str}`` (see the
    module docstring). ``.weights.h5`` files go through Keras' own ``load_weights`` (same architecture required).

    Raises:
        ValueError: nothing fits, or (``strict``) a layer other than the head was not copied; the message names
            every such layer and why.
    """
    if str(source).endswith(".weights.h5"):
        model.load_weights(source)
        names = [layer.name for layer in keyed_layers(model).values()]
        return _report(source, names, [], [], [], {})
    src = keyed_layers(source_model(source))
    dst = keyed_layers(model)
    head = next(reversed(dst), None)  # the output layer: the last weight layer in network order
    copied, skipped, missing, why = [], [], [], {}
    for key, layer in dst.items():
        other = src.get(key)
        if key == head and carry == "backbone":
            skipped.append(layer.name)
            why[layer.name] = "the head (carry: backbone)"
        elif other is None:
            missing.append(layer.name)
            why[layer.name] = f"not in the source (no layer {key!r})"
        elif type(other) is not type(layer) or _shapes(other) != _shapes(layer):
            skipped.append(layer.name)
            why[layer.name] = (f"{type(layer).__name__} {_shapes(layer)} here, {type(other).__name__} "
                               f"{_shapes(other)} in the source")
        else:
            layer.set_weights(other.get_weights())
            copied.append(layer.name)
    unused = [layer.name for key, layer in src.items() if key not in dst]
    report = _report(source, copied, skipped, missing, unused, why)
    if not copied:
        raise ValueError(f"model.init_from: no layer of {source} fits model {model.name!r} (different "
                         f"architecture?); {report['summary']}")
    if strict:
        bad = [name for key, layer in dst.items() if (name := layer.name) in why and key != head]
        if bad:
            raise ValueError(
                f"model.init_from: {len(bad)} layer(s) of model {model.name!r} would not carry over from {source}: "
                + "; ".join(f"{name}: {why[name]}" for name in bad)
                + ". Set model.init_from_strict: false to start them from their initialisation (a deliberate "
                  "partial start, e.g. a masked-modelling run without nucleus tokens into a nucleus model)")
    log.info(report["summary"])
    return report


def _report(source, copied, skipped, missing, unused, why) -> dict:
    summary = (f"init_from {source}: copied {len(copied)} layers, skipped {len(skipped)}, missing in the source "
               f"{len(missing)}, source layers unused {len(unused)}")
    for label, names in (("skipped", skipped), ("missing", missing)):
        if names:
            summary += f"; {label}: " + ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
    return {"source": str(source), "copied": copied, "skipped": skipped, "missing": missing, "unused": unused,
            "reasons": why, "summary": summary}


def write_report(report: dict, run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/init_from.json``: what `load_initial_weights` copied, skipped, missed (the run keeps it)."""
    path = Path(run_dir) / "init_from.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
