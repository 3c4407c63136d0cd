"""The search space of an experiment's ``tune`` section: dotted config keys -> keras-tuner hyperparameters.

    tune:
      space:
        optimizer.learning_rate: {type: float, min: 1.0e-4, max: 1.0e-2, sampling: log}
        model.args.base_filters: {type: choice, values: [8, 16, 32]}    # or just [8, 16, 32]
        model.args.depth: {type: int, min: 2, max: 4, step: 1}
        loss.name: {type: choice, values: [dice_focal, dice_ce]}
        +loss.args.alpha: {type: float, min: 0.1, max: 0.9, parent: {loss.name: [dice_focal]}}

Each key is a dotted path into the experiment config; a trial is the base config with its values set there.
As with ``--set`` overrides, the key must already exist in the config unless it starts with ``+`` (a new key
under an existing mapping): a typo must not silently tune a setting nobody reads. The ``+`` is not part of the
hyperparameter's name (``loss.args.alpha`` above).

Types: ``float`` / ``int`` (``min``, ``max``, optional ``step``, ``sampling: linear | log | reverse_log``),
``choice`` (``values``; ints, floats, strings or booleans, one type), ``boolean``, ``fixed`` (``value``). Every
type takes an optional ``default`` and ``parent: {PARENT_KEY: [values]}``: the hyperparameter is only active (and
only set in the trial's config) when the parent hyperparameter takes one of those values.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

from medtf.training.config import ConfigError, dotted_parent

TYPES = ("float", "int", "choice", "boolean", "fixed")
SAMPLINGS = ("linear", "log", "reverse_log")
_FIELDS = {"float": {"min", "max", "step", "sampling"}, "int": {"min", "max", "step", "sampling"},
           "choice": {"values", "ordered"}, "boolean": set(), "fixed": {"value"}}
_COMMON = {"type", "default", "parent"}


class SpaceError(ConfigError):
    """The ``tune.space`` section is not a valid search space."""


def _spec(key: str, raw: Any) -> dict:
    """One entry in its long form (a bare list is a choice)."""
    if isinstance(raw, list):
        raw = {"type": "choice", "values": raw}
    if not isinstance(raw, Mapping):
        raise SpaceError(f"tune.space.{key}: expected a mapping like {{type: float, min: ..., max: ...}} or a "
                         f"list of choices, got {raw!r}")
    spec = dict(raw)
    kind = spec.get("type")
    if kind not in TYPES:
        raise SpaceError(f"tune.space.{key}: unknown type {kind!r}; choose from {', '.join(TYPES)}")
    unknown = set(spec) - _COMMON - _FIELDS[kind]
    if unknown:
        raise SpaceError(f"tune.space.{key}: unknown field(s) {sorted(unknown)} for type {kind} "
                         f"(allowed: {sorted(_COMMON | _FIELDS[kind])})")
    if kind in ("float", "int"):
        _check_range(key, spec)
    elif kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"tune.space.{key}: a choice needs a non-empty list of values")
        kinds = {"boolean" if isinstance(v, bool) else "number" if isinstance(v, (int, float))
                 else "string" if isinstance(v, str) else None for v in values}
        if None in kinds or len(kinds) > 1:
            raise SpaceError(f"tune.space.{key}: choice values must all be numbers, all strings or all booleans "
                             f"(got {values!r})")
        if len(set(map(repr, values))) != len(values):
            raise SpaceError(f"tune.space.{key}: duplicate choice values {values!r}")
    elif kind == "fixed" and "value" not in spec:
        raise SpaceError(f"tune.space.{key}: a fixed entry needs a value")
    if "default" in spec:
        _check_default(key, spec)
    return spec


def _check_default(key: str, spec: dict) -> None:
    default, kind = spec["default"], spec["type"]
    if kind == "fixed":
        raise SpaceError(f"tune.space.{key}: a fixed entry has a value, not a default")
    if kind in ("float", "int"):
        ok = not isinstance(default, bool) and isinstance(default, (int, float)) \
            and spec["min"] <= default <= spec["max"]
    elif kind == "choice":
        ok = default in spec["values"]
    else:
        ok = isinstance(default, bool)
    if not ok:
        raise SpaceError(f"tune.space.{key}: default {default!r} is not one of the possible values")


def _check_range(key: str, spec: dict) -> None:
    for field in ("min", "max"):
        value = spec.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpaceError(f"tune.space.{key}: {field} must be a number (got {value!r})")
        if spec["type"] == "int" and not float(value).is_integer():
            raise SpaceError(f"tune.space.{key}: an int range needs whole-number bounds (got {field} {value!r})")
    if spec["min"] > spec["max"]:
        raise SpaceError(f"tune.space.{key}: min {spec['min']} > max {spec['max']}")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        raise SpaceError(f"tune.space.{key}: unknown sampling {sampling!r}; choose from {', '.join(SAMPLINGS)}")
    if sampling != "linear" and spec["min"] <= 0:
        raise SpaceError(f"tune.space.{key}: {sampling} sampling needs min > 0 (got {spec['min']})")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
                             or (sampling != "linear" and step <= 1)):
        raise SpaceError(f"tune.space.{key}: step must be a positive number (> 1: a factor, for {sampling} "
                         f"sampling), got {step!r}")


def parse_space(space: Mapping | None) -> dict[str, dict]:
    """Validate ``tune.space`` -> ``{name: spec}`` in declaration order with every parent before its children.

    Raises `SpaceError` (a `ConfigError`) naming the entry for: an unknown type or field, min > max, log sampling
    over a range that reaches 0, bad choices, a parent that is not in the space, or a cycle of parents.
    """
    if not isinstance(space, Mapping) or not space:
        raise SpaceError("tune.space must be a non-empty mapping of dotted config keys to hyperparameters")
    specs: dict[str, dict] = {}
    for raw_key, raw in space.items():
        key = str(raw_key)
        name = key.lstrip("+")
        if not name or not all(name.split(".")):
            raise SpaceError(f"tune.space: {key!r} is not a dotted config key")
        if name in specs:
            raise SpaceError(f"tune.space: {name!r} appears twice")
        spec = _spec(name, raw)
        spec["add"] = key.startswith("+")
        specs[name] = spec
    for name, spec in specs.items():
        parent = spec.get("parent")
        if parent is None:
            continue
        if not isinstance(parent, Mapping) or len(parent) != 1:
            raise SpaceError(f"tune.space.{name}: parent must be one {{KEY: [values]}} mapping (got {parent!r})")
        (parent_name, values), = parent.items()
        parent_name = str(parent_name).lstrip("+")
        if parent_name not in specs:
            raise SpaceError(f"tune.space.{name}: parent {parent_name!r} is not in the space "
                             f"(known: {', '.join(specs)})")
        values = values if isinstance(values, list) else [values]
        if specs[parent_name]["type"] == "choice":
            bad = [v for v in values if v not in specs[parent_name]["values"]]
            if bad:
                raise SpaceError(f"tune.space.{name}: parent values {bad} are not choices of {parent_name!r}")
        spec["parent"] = (parent_name, values)
    return _parents_first(specs)


def _parents_first(specs: dict[str, dict]) -> dict[str, dict]:
    # keras-tuner samples in declaration order and decides whether a child is active from its parent's value:
    # the parent must come first.
    ordered: dict[str, dict] = {}
    visiting: set[str] = set()

    def visit(name):
        if name in ordered:
            return
        if name in visiting:
            raise SpaceError(f"tune.space: the parents of {name!r} form a cycle")
        visiting.add(name)
        if specs[name].get("parent"):
            visit(specs[name]["parent"][0])
        ordered[name] = specs[name]

    for name in specs:
        visit(name)
    return ordered


def build_hyperparameters(specs: Mapping[str, dict]):
    """``parse_space`` output -> a `keras_tuner.HyperParameters` holding the search space (names = dotted keys).

    Example:
        >>> hp = build_hyperparameters(parse_space({"optimizer.learning_rate":
        ...                                         {"type": "float", "min": 1e-4, "max": 1e-2, "sampling": "log"}}))
        >>> hp.space[0].sampling
        'log'
    """
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for name, spec in specs.items():
        parent = spec.get("parent")
        cond = {"parent_name": parent[0], "parent_values": parent[1]} if parent else {}
        default = {"default": spec["default"]} if "default" in spec else {}
        kind = spec["type"]
        try:
            if kind == "float":
                hp.Float(name, float(spec["min"]), float(spec["max"]), step=spec.get("step"),
                         sampling=spec.get("sampling", "linear"), **default, **cond)
            elif kind == "int":
                hp.Int(name, int(spec["min"]), int(spec["max"]), step=spec.get("step"),
                       sampling=spec.get("sampling", "linear"), **default, **cond)
            elif kind == "choice":
                values = list(spec["values"])
                if any(isinstance(v, float) for v in values):  # [0.5, 1] in YAML: keras-tuner wants one type
                    values = [float(v) for v in values]
                hp.Choice(name, values, ordered=spec.get("ordered"), **default, **cond)
            elif kind == "boolean":
                hp.Boolean(name, **default, **cond)
            else:
                hp.Fixed(name, spec["value"], **cond)
        except ValueError as exc:  # e.g. a default outside the range: keras-tuner's own check
            raise SpaceError(f"tune.space.{name}: {exc}") from None
    return hp


def check_keys(specs: Mapping[str, dict], config: Mapping) -> None:
    """Every key must name an existing config value (or, with ``+``, a new key under an existing mapping)."""
    for name, spec in specs.items():
        try:
            dotted_parent(config, name, add=bool(spec.get("add")), context=f"tune.space.{name}")
        except ConfigError as exc:
            raise SpaceError(str(exc)) from None


def candidates(spec: Mapping) -> list:
    """The values of one entry a check should try: both ends of a range, every choice, the fixed value."""
    kind = spec["type"]
    if kind in ("float", "int"):
        cast = float if kind == "float" else int
        return [cast(spec["min"]), cast(spec["max"])]
    if kind == "choice":
        return list(spec["values"])
    return [False, True] if kind == "boolean" else [spec["value"]]


def check_values(specs: Mapping[str, dict], base: Mapping, parse) -> None:
    """Apply each value an entry can take (`candidates`, its parents set to a value that activates it) to
    ``base`` and ``parse`` the result (`medtf.training.experiment.parse_config`): a key that does not exist
    (``+train.epocs``), a value of the wrong type or an unknown name (``loss.name: [dice_cee]``) fails before the
    search starts, named after the entry."""
    def activating(name: str) -> dict:
        parent = specs[name].get("parent")
        if not parent:
            return {}
        parent_name, values = parent
        return {**activating(parent_name), parent_name: values[0]}

    for name, spec in specs.items():
        for value in candidates(spec):
            try:
                parse(apply_values(base, {**activating(name), name: value}))
            except ConfigError as exc:
                raise SpaceError(f"tune.space.{name} = {value!r}: {exc}") from None


def native(value: Any) -> Any:
    """numpy scalars (some oracles return them) -> plain Python values that YAML and JSON can write."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value) and value == round(value, 12):
        return float(f"{value:.12g}")  # 0.00010000000000000002 -> 0.0001 in results.csv and best.yaml
    return value


def active_values(hp) -> dict[str, Any]:
    """The values of the active hyperparameters of a trial's `HyperParameters` (keras-tuner's own ``tuner/*``
    bookkeeping values excluded), in space order."""
    return {p.name: native(hp.values[p.name]) for p in hp.space
            if p.name in hp.values and hp.is_active(p) and not p.name.startswith("tuner/")}


def apply_values(config: Mapping, values: Mapping[str, Any]) -> dict:
    """A deep copy of ``config`` with each dotted key set to its value (sections must exist already).

    Example:
        >>> apply_values({"model": {"args": {"base_filters": 32}}}, {"model.args.base_filters": 8})
        {'model': {'args': {'base_filters': 8}}}
    """
    result = copy.deepcopy(dict(config))
    for name, value in values.items():
        try:
            node, last = dotted_parent(result, name, add=True, context=name)
        except ConfigError as exc:
            raise SpaceError(str(exc)) from None
        node[last] = native(value)
    return result
