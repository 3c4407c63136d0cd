"""Name → constructor registry for model variants (timm ``_registry.py`` style)."""

from __future__ import annotations

from typing import Callable

_MODEL_REGISTRY: dict[str, Callable] = {}


def register_model(name: str | None = None, *, model_class: type | None = None):
    """Decorator registering a variant function under ``name`` (default: the function's ``__name__``).

    ``model_class``: the class a ``**kwargs`` variant builds, whose constructor signature says which ``model.args``
    a config may give (`model_constructor`).
    """

    def decorator(fn: Callable) -> Callable:
        key = name or fn.__name__
        if key in _MODEL_REGISTRY and _MODEL_REGISTRY[key] is not fn:
            raise ValueError(f"model {key!r} is already registered")
        _MODEL_REGISTRY[key] = fn
        if model_class is not None:
            fn.model_class = model_class
        return fn

    if callable(name):  # used as bare ``@register_model``
        fn, name = name, None
        return decorator(fn)
    return decorator


def get_model(name: str, **kwargs):
    """Build the registered variant ``name``; ``kwargs`` override its defaults."""
    if name not in _MODEL_REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {list_models()}")
    return _MODEL_REGISTRY[name](**kwargs)


def model_constructor(name: str) -> Callable:
    """What ``get_model(name, **args)`` finally calls with ``args``: the variant's class, else the variant."""
    if name not in _MODEL_REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {list_models()}")
    fn = _MODEL_REGISTRY[name]
    return getattr(fn, "model_class", fn)


def list_models() -> list[str]:
    """Sorted names of all registered variants."""
    return sorted(_MODEL_REGISTRY)
