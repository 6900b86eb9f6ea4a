"""Feature extractors and their registry.

``build_extractor(name, options)`` is the one way to make an extractor. Each entry maps a ``--features`` name to
``module:Class``; the module is imported only when that extractor is asked for, so a missing optional dependency
of one backbone never breaks the others.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor

EXTRACTORS: dict[str, str] = {
    "dift_sd": "propagate.features.dift_sd:DiftSDExtractor",
    "adm": "propagate.features.adm:DiftADMExtractor",
    "baseline": "propagate.features.baseline:BaselineExtractor",
}


def extractor_class(name: str) -> type[FeatureExtractor]:
    """The class registered under ``name``; a PropagateError listing the choices if there is none."""
    if name not in EXTRACTORS:
        raise PropagateError(f"unknown features {name!r}: choose one of {', '.join(sorted(EXTRACTORS))}")
    module_name, cls_name = EXTRACTORS[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def build_extractor(name: str, options: dict[str, Any] | None = None) -> FeatureExtractor:
    """Build the extractor ``name`` from keyword ``options`` (the ``extractor:`` section of a preset).

    Options the extractor does not take are an error naming them, so a typo in a preset never goes unnoticed.
    """
    cls = extractor_class(name)
    options = dict(options or {})
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        known = sorted(k for k in params if k != "self")
        raise PropagateError(
            f"features {name!r} take no option(s) {', '.join(unknown)}; known options: {', '.join(known)}"
        )
    return cls(**options)


__all__ = ["EXTRACTORS", "FeatureExtractor", "build_extractor", "extractor_class"]
