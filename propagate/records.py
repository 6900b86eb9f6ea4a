"""Run records: what produced a set of results (``run_info.json``: config, extractor settings, package versions,
date, command line), and the settings that resumed results must agree on. No torch: an extractor is anything with
:class:`RecordedExtractor`'s three members."""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Protocol, TypeVar

from propagate.config import Config
from propagate.errors import PropagateError

JSON = dict[str, object]
RUN_INFO = "run_info.json"  # what produced the results

# Options that change speed but not results: left out when checking that a resumed run uses the same settings.
SPEED_ONLY = {("batch_frames",), ("extractor",), ("propagation", "device"), ("propagation", "screen")}


class RecordedExtractor(Protocol):
    """What a run record needs of a feature extractor (:class:`propagate.features.FeatureExtractor` has it)."""

    @property
    def name(self) -> str: ...

    def settings(self) -> dict[str, object]: ...

    def describe(self) -> str: ...


E = TypeVar("E", bound=RecordedExtractor)  # an extractor a run builds and records


def result_settings(config: Config) -> JSON:
    """The config without the options that only change speed (what resumed results must agree on), as JSON."""
    kept = {k: v for k, v in config.to_dict().items() if (k,) not in SPEED_ONLY}
    for section, value in list(kept.items()):
        if isinstance(value, dict):
            kept[section] = {k: v for k, v in value.items() if (section, k) not in SPEED_ONLY}
    return json.loads(json.dumps(kept, default=str))


def run_record(config: Config, extractor: RecordedExtractor, **extra: object) -> JSON:
    """What produced a set of results: config, extractor settings, package versions, date, command line (as JSON
    reads it back: tuples become lists)."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for package in ("propagate", "torch", "diffusers", "transformers", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    record = {
        "config": config.to_dict(),
        "extractor": extractor.settings(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        **extra,
    }
    return json.loads(json.dumps(record, default=str))


def read_json(path: Path, what: str) -> JSON:
    """A JSON object the tool wrote; a PropagateError naming ``path`` if it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise PropagateError(f"{what} {path} is unreadable: delete it (and the results beside it) or choose another "
                             "--out") from None
    if not isinstance(data, dict):
        raise PropagateError(f"{what} {path} is not a propagate record: choose another --out")
    return data


def default_settings() -> JSON:
    """The settings (:func:`propagate.records.result_settings`) of a config left at every default."""
    return result_settings(Config())


def settings_agree(old: object, new: object, default: object = None) -> bool:
    """Whether recorded settings ``old`` agree with ``new``. A key that ``old`` lacks (recorded by an earlier
    version, before the option existed) agrees when ``new`` holds the option's default there, so adding an option
    does not orphan results made before it."""
    if isinstance(old, dict) and isinstance(new, dict):
        defaults = default if isinstance(default, dict) else {}
        return all(settings_agree(old[k], new.get(k), defaults.get(k)) if k in old else
                   (k in defaults and new[k] == defaults[k]) for k in new) and set(old) <= set(new)
    return old == new
