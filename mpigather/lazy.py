"""Lazy attributes of a package: its names come from their modules at first use (PEP 562), so
importing the package costs nothing until a name is asked for."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, where: dict[str, str], names: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``where`` maps each name to its module (relative
    to the package); the value found is kept in ``names`` (the package's globals), so the next
    use is a plain lookup."""

    def __getattr__(name: str) -> Any:
        mod = where.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{mod}", package), name)
        names[name] = value
        return value

    return __getattr__
