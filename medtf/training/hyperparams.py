"""Typed config sections: a strict dataclass base that parses one mapping, as tf/models' ``base_config.Config``.

A section is a ``@dataclass`` subclass of `Config`; its annotations are the schema::

    @dataclass
    class OptimizerConfig(Config):
        name: str = "adamw"
        learning_rate: float = 1e-3

    OptimizerConfig.from_dict({"learning_rat": 0.1}, "optimizer")
    # ConfigError: optimizer.learning_rat: unknown key (did you mean learning_rate?); known: learning_rate, name

`Config.from_dict` rejects unknown keys (with a `difflib` suggestion), checks every value against its annotation
(``int``, ``float``, ``str``, ``bool``, ``X | None``, ``list[X]``, ``dict``, ``Any``, nested sections) and names the
dotted key and the expected type in the message; a field without a default is required. After the fields are set,
``check(path)`` runs the section's own rules (ranges, registry names). `Config.as_dict` gives the plain mapping back
(what ``config.yaml`` stores and ``from_dict`` reads again). A field's ``metadata={"parse": fn}`` parses that
field itself (``fn(raw, dotted_key)``), for one-of sections such as ``schedule``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Iterable, Mapping, Union

from medtf.training.config import ConfigError, did_you_mean  # noqa: F401  (did_you_mean re-exported)

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
               list: "a list", type(None): "null"}


def unknown_name(key: str, what: str, name: Any, choices: Iterable[str]) -> ConfigError:
    """``key: unknown WHAT 'name' (did you mean ...?); known: a, b, c`` as a `ConfigError`."""
    choices = sorted(str(c) for c in choices)
    return ConfigError(f"{key}: unknown {what} {name!r}{did_you_mean(str(name), choices)}; "
                       f"known: {', '.join(choices) or '(none)'}")


def unknown_keys(key: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Raise for the first key of ``given`` not in ``known`` (``key`` is the section's dotted path)."""
    known = list(known)
    for name in given:
        if name not in known:
            where = f"{key}.{name}" if key else str(name)
            raise ConfigError(f"{where}: unknown key{did_you_mean(str(name), known)}; "
                              f"known{' in ' + key if key else ''}: {', '.join(sorted(known))}")


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is list:
        args = typing.get_args(hint)
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, Config):
        return "a mapping"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def check_value(value: Any, hint, key: str) -> Any:
    """``value`` checked against the annotation ``hint`` (converted where YAML is ambiguous), or `ConfigError`.

    Numbers: an integer is accepted where a float is expected, and a string that reads as a float (``1e-3``,
    which YAML 1.1 leaves a string) is converted; ``bool`` is never a number. A path (``os.PathLike``) is a string.

    Example:
        >>> check_value("one", int, "train.epochs")
        ConfigError: train.epochs: expected an integer, got 'one'
    """
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return check_value(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint.from_dict(value, key)
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {hint!r}")  # a bug in a section, not a user mistake


@dataclasses.dataclass
class Config:
    """Base of every typed section (see the module docstring)."""

    @classmethod
    def from_dict(cls, raw: Mapping | None, path: str = ""):
        """Parse ``raw`` (None: every default) into ``cls``; ``path`` is the section's dotted key for messages."""
        if raw is None:
            raw = {}
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path or 'config'}: expected a mapping of settings, got {raw!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown_keys(path, raw, fields)
        hints = typing.get_type_hints(cls)
        values = {}
        for name, f in fields.items():
            key = f"{path}.{name}" if path else name
            if name in raw:
                parse = f.metadata.get("parse")
                values[name] = parse(raw[name], key) if parse else check_value(raw[name], hints[name], key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing (required)")
        obj = cls(**values)
        obj.check(path)
        return obj

    def check(self, path: str) -> None:
        """The section's own rules beyond types (ranges, choices, registries); raise `ConfigError`."""

    def as_dict(self) -> dict:
        """The plain mapping (nested sections as dicts, lists copied): what ``from_dict`` reads back."""
        def plain(value):
            if isinstance(value, Config):
                return value.as_dict()
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        """A copy with ``changes`` (unchecked: for values the code computed, not user input)."""
        return dataclasses.replace(self, **changes)


def choice(value: Any, choices: Iterable[str], key: str, what: str = "value") -> None:
    """Raise `unknown_name` when ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise unknown_name(key, what, value, choices)


def at_least(value: int | float | None, minimum: int | float, key: str) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")
