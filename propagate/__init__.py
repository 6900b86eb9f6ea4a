"""propagate: carry first-frame masks and keypoints through a video with DIFT diffusion features.

The Python API in five lines::

    from propagate import load_config, read_mask, run_masks, write_mask
    config = load_config("davis_sd")              # or "davis_baseline"; overrides={"propagation.topk": 10}
    for frame, mask in run_masks("frames/", read_mask("first.png"), config):
        write_mask(f"out/{frame.name}.png", mask)

Each name is imported from its module on first use, so that ``import propagate`` (and every command that needs no
model, such as ``propagate --help`` or ``propagate score``) does not pay for torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from propagate.lazy import lazy_exports

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

__version__ = "0.1.0"

_HOMES = {  # public name -> the module that defines it
    "Config": "config", "load_config": "config", "PropagateError": "errors", "build_extractor": "features",
    "iter_features": "features.stream", "read_mask": "labels", "write_mask": "labels", "run_masks": "pipeline",
    "track_points": "pipeline", "LabelPropagator": "propagation", "run_points": "runs", "run_video": "runs",
    "Session": "session",
}

__all__ = [
    "Config", "LabelPropagator", "PropagateError", "build_extractor", "iter_features", "load_config", "read_mask",
    "Session", "run_masks", "run_points", "run_video", "track_points", "write_mask",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
