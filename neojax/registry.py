"""One small registry: kind -> name -> component. Configs select components by name.

    @registry.register("attention", "local")
    def local_attention(...): ...

    registry.get("attention", "local")   # unknown names list what exists
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

_REGISTRY: dict[str, dict[str, Any]] = {}


def register(kind: str, name: str, replace: bool = False) -> Callable[[Any], Any]:
    """replace=True lets a notebook cell that defines a component run again."""
    def wrap(obj):
        entries = _REGISTRY.setdefault(kind, {})
        if name in entries and entries[name] is not obj and not replace:
            raise ValueError(f"{kind} {name!r} is already registered; pick another name (or replace=True)")
        entries[name] = obj
        return obj
    return wrap


@contextlib.contextmanager
def scoped(kind: str, name: str, obj: Any):
    """Register `obj` for the duration of a `with` block (tests, experiments in a notebook), then
    restore whatever was there."""
    entries = _REGISTRY.setdefault(kind, {})
    missing = object()
    previous = entries.get(name, missing)
    entries[name] = obj
    try:
        yield obj
    finally:
        if previous is missing:
            del entries[name]
            if not entries:
                del _REGISTRY[kind]
        else:
            entries[name] = previous


def get(kind: str, name: str) -> Any:
    entries = _REGISTRY.get(kind)
    if not entries:
        raise KeyError(f"no components of kind {kind!r} are registered; kinds: {sorted(_REGISTRY)}")
    if name not in entries:
        raise KeyError(f"unknown {kind} {name!r}; registered {kind} names: {sorted(entries)}")
    return entries[name]


def names(kind: str) -> list[str]:
    return sorted(_REGISTRY.get(kind, {}))


def kinds() -> list[str]:
    return sorted(_REGISTRY)
