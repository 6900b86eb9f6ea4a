"""Package facades that import each public name from its module on first use (PEP 562), so that importing a package
(and every command that needs no model, such as ``propagate --help`` or ``propagate score davis``) pays for no torch.

>>> __getattr__, __dir__ = lazy_exports(__name__, {"Session": "session"})   # in a package's __init__.py
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping


def lazy_exports(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: ``homes`` maps each public name to the submodule
    (relative to ``package``) that defines it; a name is imported when first asked for, then kept in the package."""
    namespace = sys.modules[package].__dict__

    def module_getattr(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
        namespace[name] = value
        return value

    def module_dir() -> list[str]:
        return sorted(set(namespace) | set(homes))

    return module_getattr, module_dir
