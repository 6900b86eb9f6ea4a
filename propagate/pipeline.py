"""The streaming generators: frames -> features -> propagation -> decoded labels, one frame at a time.

:func:`run_masks` carries a first-frame mask through a video, :func:`track_points` carries first-frame points. Each
frame flows through the whole chain before the next one is read (features are extracted in small batches), so
memory is bounded by the context queue, not by the video's length. Nothing here writes files: the jobs that write
results folders are in :mod:`propagate.runs`.

>>> for frame, mask in run_masks("frames/", read_mask("00000.png"), load_config("davis_sd")):
...     write_mask(f"out/{frame.name}.png", mask)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from propagate.config import Config, KeypointConfig, PropagationConfig
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore, iter_features
from propagate.keypoints import CONVENTIONS, decode_keypoints, keypoint_heatmaps, pixels_to_grid
from propagate.labels import labels_to_mask, mask_to_labels, require_objects
from propagate.propagation import LabelPropagator
from propagate.video import Frame, VideoSource, open_video, processing_size


def as_source(video: str | Path | VideoSource) -> VideoSource:
    """``video`` itself, or the frame folder / video file it names, opened."""
    return video if isinstance(video, VideoSource) else open_video(video)


def check_length(source: VideoSource) -> None:
    """Propagation needs a first frame and at least one more."""
    if len(source) < 2:
        raise PropagateError(f"video {source.path} has {len(source)} frame: at least 2 are needed to propagate")


def _progress(source: VideoSource, what: str, progress: bool) -> tqdm:
    return tqdm(total=len(source), desc=f"{what} {Path(source.path).name}", unit="frame", disable=not progress,
                leave=False, file=sys.stderr)


def run_masks(
    video: str | Path | VideoSource,
    first_mask: np.ndarray,
    config: Config,
    extractor: FeatureExtractor | None = None,
    cache: FeatureStore | None = None,
    progress: bool = True,
) -> Iterator[tuple[Frame, np.ndarray]]:
    """Propagate ``first_mask [H, W]`` (uint8 indices) through ``video``; yield ``(frame, mask [H, W] uint8)``.

    Frame 0 yields the given mask. The generator holds only the context queue between frames. ``cache`` (a
    :class:`propagate.cache.FeatureCache`) supplies stored features instead of extracting them.
    """
    source = as_source(video)
    check_length(source)
    native_w, native_h = source.native_size
    if first_mask.shape != (native_h, native_w):
        raise PropagateError(
            f"first mask is {first_mask.shape[1]}x{first_mask.shape[0]} but the frames of {source.path} are "
            f"{native_w}x{native_h}: give the mask of the first frame"
        )
    num_objects = max(require_objects(first_mask, "first mask"))
    extractor = extractor or build_extractor(config.features, config.extractor)
    proc_w, proc_h = processing_size(source.native_size, config.resize)
    propagator = LabelPropagator(config.propagation)
    with _progress(source, "propagate", progress) as bar:
        for frame, feats in iter_features(source, extractor, config.resize, config.batch_frames, cache):
            if frame.index == 0:
                labels = mask_to_labels(first_mask, num_objects, tuple(feats.shape[1:]), config.propagation.label_downsample)
                propagator.start(feats, labels)
                mask = first_mask
            else:
                soft = propagator.step(feats)
                mask = labels_to_mask(soft, (proc_h, proc_w), (native_h, native_w), config.propagation.minmax_norm)
            bar.update(1)
            yield frame, mask


class KeypointTracker:
    """Carries points through a video one frame at a time (a :class:`LabelPropagator` plus heatmap encode/decode).

    >>> tracker = KeypointTracker(config.propagation, config.keypoints, native_wh=(320, 240))
    >>> tracker.start(feats0, xy0)              # [C, h, w] features, [J, 2] native pixels
    >>> xy, confidence = tracker.step(feats1)   # [J, 2], [J] for frame 1, and so on
    """

    def __init__(
        self,
        propagation: PropagationConfig,
        keypoints: KeypointConfig,
        native_wh: tuple[int, int],
        device: str | torch.device | None = None,
    ):
        if keypoints.decode_topk < 1:
            raise PropagateError(f"keypoints.decode_topk must be >= 1, got {keypoints.decode_topk}")
        if keypoints.cell_convention not in CONVENTIONS:
            raise PropagateError(f"keypoints.cell_convention {keypoints.cell_convention!r}: choose one of {', '.join(CONVENTIONS)}")
        self.keypoints = keypoints
        self.native_wh = tuple(native_wh)
        self.propagator = LabelPropagator(propagation, device=device)
        self.labels: torch.Tensor | None = None  # [1 + J, h, w] soft labels of the latest frame
        self.tracked: np.ndarray | None = None  # [J] bool: the point has a label on the grid (see start)

    def start(self, feats: torch.Tensor, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame 0: features ``[C, h, w]`` and points ``[J, 2]`` in native pixels (NaN rows: no label).

        Returns frame 0's points and confidences: ``xy`` itself with confidence 1, except points whose heatmap is
        empty (off the grid, or NaN), which cannot be propagated: NaN with confidence 0 (see :attr:`tracked`).
        """
        grid_hw = tuple(feats.shape[-2:])
        uv = pixels_to_grid(xy, self.native_wh, grid_hw, self.keypoints.cell_convention)
        self.labels = keypoint_heatmaps(uv, grid_hw, self.keypoints.sigma)
        self.propagator.start(feats, self.labels)
        self.tracked = (self.labels[1:].flatten(1).sum(1) > 0).numpy()
        first = np.asarray(xy, dtype=np.float64).copy()
        first[~self.tracked] = np.nan
        return first, self.tracked.astype(np.float64)

    def step(self, feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Points ``[J, 2]`` (NaN if lost) and confidences ``[J]`` of the next frame from its features ``[C, h, w]``."""
        self.labels = self.propagator.step(feats)
        return decode_keypoints(self.labels, self.native_wh, self.keypoints.decode_topk, self.keypoints.cell_convention)


def track_points(
    video: str | Path | VideoSource,
    xy: np.ndarray,
    config: Config,
    extractor: FeatureExtractor | None = None,
    cache: FeatureStore | None = None,
    progress: bool = True,
    tracker: KeypointTracker | None = None,
) -> Iterator[tuple[Frame, np.ndarray, np.ndarray]]:
    """Yield ``(frame, xy [J, 2], confidence [J])`` for every frame; frame 0 gives ``xy`` back (see
    :meth:`KeypointTracker.start`). Pass a ``tracker`` to read its :attr:`~KeypointTracker.tracked` afterwards.

    >>> for frame, xy, confidence in track_points("clip.mp4", first_xy, load_config("jhmdb_baseline")):
    ...     print(frame.index, xy[0], confidence[0])
    """
    source = as_source(video)
    check_length(source)
    extractor = extractor or build_extractor(config.features, config.extractor)
    tracker = tracker or KeypointTracker(config.propagation, config.keypoints, source.native_size)
    with _progress(source, "points", progress) as bar:
        for frame, feats in iter_features(source, extractor, config.resize, config.batch_frames, cache):
            if frame.index == 0:
                pred, confidence = tracker.start(feats, xy)
            else:
                pred, confidence = tracker.step(feats)
            bar.update(1)
            yield frame, pred, confidence
