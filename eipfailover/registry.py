"""Lazy ``{"name": "module:Class"}`` registries for the plug-in families, with precise import errors."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TypeVar

from eipfailover.errors import RegistryError

T = TypeVar("T")


def load(registry: Mapping[str, str], name: str, base: type[T]) -> type[T]:
    """Import the class registered under ``name`` and check that it implements ``base``."""
    try:
        spec = registry[name]
    except KeyError:
        raise RegistryError(f"unknown {base.__name__} type {name!r} (known: {', '.join(sorted(registry))})") from None
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(
            f"{base.__name__} type {name!r} needs {module_name}, which failed to import: {exc}"
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise RegistryError(f"{spec} is not a {base.__name__}")
    return cls
