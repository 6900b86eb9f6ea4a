"""Feature extractors and their registry.

``build_extractor(name, options)`` is the one way to make an extractor from a preset. Each registry entry maps a
``--features`` name to ``module:Class`` and to the suffix of its presets (``configs/<task>_<suffix>.yaml``). The
module is imported only when that extractor is asked for, so a missing optional dependency of one backbone never
breaks the others. Adding a backbone: one module (an extractor class with a frozen options dataclass) and one entry.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass
from typing import Mapping

from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor
from propagate.options import Checked, check_fields


@dataclass(frozen=True)
class Backbone:
    """A registry entry: where the extractor class lives, and the suffix of its presets."""

    target: str  # "package.module:Class"
    preset_suffix: str  # configs/<task>_<preset_suffix>.yaml, e.g. davis_sd


EXTRACTORS: dict[str, Backbone] = {
    "dift_sd": Backbone("propagate.features.dift_sd:DiftSDExtractor", "sd"),
    "adm": Backbone("propagate.features.adm:DiftADMExtractor", "adm"),
    "baseline": Backbone("propagate.features.baseline:BaselineExtractor", "baseline"),
}


def _backbone(name: str) -> Backbone:
    if name not in EXTRACTORS:
        raise PropagateError(f"unknown features {name!r}: choose one of {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name]


def extractor_class(name: str) -> type[FeatureExtractor]:
    """The class registered under ``name``; a PropagateError listing the choices if there is none."""
    module_name, cls_name = _backbone(name).target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def preset_name(task: str, features: str) -> str:
    """The preset of ``task`` (davis, jhmdb) for ``features``: ``preset_name("davis", "dift_sd") == "davis_sd"``."""
    return f"{task}_{_backbone(features).preset_suffix}"


# ----------------------------------------------------------------------------------------------------------------
# Options: a preset's ``extractor:`` section, checked against the fields of the extractor's options dataclass


def build_options(name: str, options: Mapping[str, object] | None = None) -> object:
    """The options dataclass of extractor ``name`` made from ``options`` (the ``extractor:`` section of a preset).

    An option the extractor does not take, or a value of the wrong type or out of its declared range, is a one-line
    PropagateError naming it (``extractor.<key>``), so a typo in a preset never goes unnoticed.
    """
    options_type = extractor_class(name).options_type
    fields = {f.name for f in dataclasses.fields(options_type)}
    options = dict(options or {})
    unknown = sorted(k for k in options if k not in fields)
    if unknown:
        raise PropagateError(
            f"features {name!r} take no option(s) {', '.join(unknown)}; known options: {', '.join(sorted(fields))}"
        )
    built = options_type(**options)  # an options dataclass checks its own values (propagate.options.Checked)
    if not isinstance(built, Checked):  # an extractor registered with a plain dataclass: its types, checked alike
        check_fields(built, "extractor.", f" for features {name!r}")
    return built


def build_extractor(name: str, options: Mapping[str, object] | None = None) -> FeatureExtractor:
    """Build the extractor ``name`` from ``options`` (the ``extractor:`` section of a preset), checked by
    :func:`build_options`. An extractor with a precision logs it (``dtype: auto`` depends on the machine) as one
    info line on the ``propagate`` logger, which the CLI prints on stderr; ``settings()`` records the same."""
    built = build_options(name, options)
    extractor = extractor_class(name)(built)  # type: ignore[call-arg]
    resolved = extractor.settings().get("dtype")
    if resolved is not None:
        asked = getattr(built, "dtype", resolved)
        device = getattr(extractor, "device", None)
        how = f"dtype {asked} on {getattr(device, 'type', device)}" if asked == "auto" else "as set"
        logging.getLogger("propagate").info("precision: %s runs in %s (%s)", name, resolved, how)
    return extractor


__all__ = ["EXTRACTORS", "Backbone", "FeatureExtractor", "build_extractor", "build_options", "extractor_class",
           "preset_name"]
