"""propagate: carry first-frame masks and keypoints through a video with DIFT diffusion features.

The Python API in five lines::

    from propagate import load_config, read_mask, run_masks, write_mask
    config = load_config("davis_sd")              # or "davis_baseline"; overrides={"propagation.topk": 10}
    for frame, mask in run_masks("frames/", read_mask("first.png"), config):
        write_mask(f"out/{frame.name}.png", mask)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# name -> module: imported on first use, so that ``import propagate.results`` (or the CLI's help) loads no torch
_API = {
    "Config": "propagate.config", "load_config": "propagate.config", "PropagateError": "propagate.errors",
    "build_extractor": "propagate.features", "iter_features": "propagate.features.stream",
    "read_mask": "propagate.labels", "write_mask": "propagate.labels", "run_masks": "propagate.pipeline",
    "track_points": "propagate.pipeline", "LabelPropagator": "propagate.propagation", "run_points": "propagate.runs",
    "run_video": "propagate.runs", "Session": "propagate.session",
}

if TYPE_CHECKING:
    from propagate.config import Config, load_config
    from propagate.errors import PropagateError
    from propagate.features import build_extractor
    from propagate.features.stream import iter_features
    from propagate.labels import read_mask, write_mask
    from propagate.pipeline import run_masks, track_points
    from propagate.propagation import LabelPropagator
    from propagate.runs import run_points, run_video
    from propagate.session import Session


def __getattr__(name: str) -> object:
    if name not in _API:
        raise AttributeError(f"module 'propagate' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "Config", "LabelPropagator", "PropagateError", "build_extractor", "iter_features", "load_config", "read_mask",
    "Session", "run_masks", "run_points", "run_video", "track_points", "write_mask",
]
