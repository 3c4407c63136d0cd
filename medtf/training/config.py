"""Experiment configs: one YAML file plus dotted overrides, resolved once and written into the run directory.

    medtf train experiments/lgg_unet2d.yaml --set train.epochs=5 --set model.args.base_filters=16

Overrides are ``dotted.key=value``; the value is parsed as YAML (``5`` -> int, ``1e-3`` -> float, ``[1, 2]`` ->
list, ``null``, ``true``), so what a user types means what it would mean in the file. A key that does not exist
in the file is an error unless the override adds a new key under an existing mapping with ``+`` (``+train.note=x``):
typos must not silently create settings nobody reads (timm ``train.py`` / big_vision configs do the same). A setting
the typed experiment schema knows needs no ``+`` even when the file leaves it at its default
(``--set train.steps_per_epoch=20``, ``--set data.service=auto``): `medtf.training.experiment.section_fields`.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


class ConfigError(ValueError):
    pass


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` (`difflib`, case-insensitive), ``""`` when none is."""
    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in choices}
    if str(name).lower() in lowered:
        return f" (did you mean {lowered[str(name).lower()]}?)"
    match = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[match[0]]}?)" if match else ""


def _yaml_value(text: str) -> Any:
    # YAML 1.1 would read "1e-3" as a string; numbers users type should stay numbers.
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _number_or_value(text: str) -> Any:
    value = _yaml_value(text)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def dotted_parent(config: dict, key: str, *, add: bool = False, context: str | None = None) -> tuple[dict, str]:
    """The mapping inside ``config`` that holds dotted ``key``, and the key's last part.

    Every section on the way must exist; the last part must exist too unless ``add`` (the ``+key`` rule), so a
    typo cannot set a value nothing reads. Errors name ``context`` (default: the key).

    Raises:
        ConfigError: a part of the path is not a section, or the key is unknown and not ``add``.

    Example:
        >>> node, last = dotted_parent({"train": {"epochs": 1}}, "train.epochs")   # ({'epochs': 1}, 'epochs')
    """
    context = context or repr(key)
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{context} has an empty key part")
    node = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), Mapping):
            raise ConfigError(f"{context}: {'.'.join(parts[: i + 1])!r} is not a section of the config")
        node = node[part]
    if parts[-1] not in node and not add:
        known = ", ".join(sorted(node)) or "(none)"
        raise ConfigError(f"{context}: unknown key {key!r}{did_you_mean(parts[-1], node)} (known here: {known}); "
                          f"prefix it with '+' to add a new key")
    return node, parts[-1]


def _schema_knows(dotted: str) -> bool:
    """Whether ``section.field`` is a field of the typed experiment schema (so setting it cannot be a typo)."""
    from medtf.training.experiment import section_fields  # experiment.py imports this module

    parts = dotted.split(".")
    return len(parts) == 2 and parts[1] in section_fields(parts[0])


def apply_overrides(config: Mapping, overrides: Iterable[str]) -> dict:
    """A copy of ``config`` with ``dotted.key=value`` overrides applied (see the module docstring)."""
    result = copy.deepcopy(dict(config))
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like key.subkey=value")
        key, text = override.split("=", 1)
        dotted = key.lstrip("+").strip()
        node, last = dotted_parent(result, dotted, add=key.startswith("+") or _schema_knows(dotted),
                                   context=f"override {override!r}")
        node[last] = _number_or_value(text)
    return result


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Read an experiment YAML file and apply overrides."""
    config = read_yaml_mapping(path, ConfigError, "config file", "a mapping of sections")
    return apply_overrides(config, overrides)


def read_yaml_mapping(path: str | os.PathLike, error: type[Exception] = ConfigError, what: str = "config file",
                      top: str = "a mapping", empty: dict | None = None) -> dict:
    """The mapping a YAML file holds; ``error`` naming the file when it is missing, not YAML or not ``top``.

    Args:
        path: the YAML file.
        error: the exception class to raise (the caller's user-error type).
        what, top: how messages name the file and the expected top level.
        empty: returned for an empty file (None: an empty file is an error like any non-mapping).

    Example:
        >>> read_yaml_mapping("cluster.yaml", ClusterConfigError, "cluster config", empty={})  # doctest: +SKIP
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None
    if data is None and empty is not None:
        return dict(empty)
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be {top}")
    return data


def save_resolved(config: Mapping, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config into the run directory (what actually ran, for reproduction)."""
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path
