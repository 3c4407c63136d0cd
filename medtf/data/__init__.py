"""Shard format (schemas, writer, manifest, splits, de-identification) and tf.data readers.

Importing this package does not import TensorFlow: conversion workers use it without paying for TF. The readers
(`make_dataset`, `make_distributed_dataset`, from `medtf.data.pipeline`) are loaded on first access.
"""

from medtf.data.manifest import fold_names, fold_splits
from medtf.data.schema import SCHEMAS, Schema, TensorField, ValueField, get_schema

_LAZY = {"make_dataset": "medtf.data.pipeline", "make_distributed_dataset": "medtf.data.pipeline"}

__all__ = ["SCHEMAS", "Schema", "TensorField", "ValueField", "fold_names", "fold_splits", "get_schema", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medtf.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
