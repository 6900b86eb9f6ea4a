"""PCK (percentage of correct keypoints) as the CRW JHMDB protocol defines it (DESIGN section 5).

Pure functions of arrays, no I/O. Conventions:

- ``pred`` and ``gt`` are ``[T, J, 2]`` arrays of (x, y) pixel coordinates of one video (0-based).
- Frame 0 is never scored: it is the given annotation.
- In each scored frame the threshold is ``alpha * 0.6 * diagonal`` of the bounding box of the frame's
  ground-truth joints (the joints counted in that frame, see ``visible``); a joint is correct when the distance
  from its prediction to its ground truth is at most the threshold.
- A missing (lost) prediction, NaN in ``pred``, is ruled by ``lost_joints``: ``wrong`` (our default) counts it as
  a miss and keeps its ground truth in the box; ``drop`` (CRW's ``eval_pck.py``, which marks a joint predicted at
  -1 not visible) leaves it out of both the score and that frame's box.
- A ground-truth joint outside the frame counts like any other (it is scored and it stretches the box). CRW's
  ``eval_pck.py`` does the same: it never looks at the image bounds.
- ``visible`` (``[T, J]`` bool, optional) leaves joints out of both the box and the score;
  :func:`propagate.datasets.jhmdb.evaluate_jhmdb` leaves out joints that had no label to propagate (their
  first-frame heatmap is empty), and later losses by ``pck.lost_joints``.
- A frame whose box has zero size (a single counted joint) has threshold 0: only an exact prediction is correct.
- Scores are percentages. PCK is the mean over joint types of their per-joint accuracy, where the per-joint
  accuracy pools every scored frame of every video (as CRW's ``computePCK``); a joint type never scored is
  NaN and left out of the mean.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np

BOX_SCALE = 0.6  # the box "size" is 0.6 x the diagonal of the joints' bounding box (CRW, JHMDB convention)
LOST_RULES = ("wrong", "drop")


def normalized_distances(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray | None = None, skip_first: bool = True,
    lost_joints: str = "wrong",
) -> np.ndarray:
    """Distances from predictions to ground truth divided by ``0.6 x`` the frame's GT box diagonal.

    Args:
        pred: ``[T, J, 2]`` predicted (x, y); NaN where a prediction is missing.
        gt: ``[T, J, 2]`` ground truth (x, y).
        visible: ``[T, J]`` bool, joints to count (default: all).
        skip_first: drop frame 0 (the protocol does).
        lost_joints: ``wrong`` (a missing prediction is a miss) or ``drop`` (not counted, not in the box; CRW).

    Returns:
        ``[T', J]`` float: the normalised distance; ``+inf`` for a missing prediction (or a nonzero distance in a
        frame whose box has zero size); NaN for a joint that is not counted. ``T' = T - 1`` with ``skip_first``.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [T, J, 2]")
    if visible is None:
        visible = np.ones(gt.shape[:2], dtype=bool)
    visible = np.asarray(visible, dtype=bool)
    if visible.shape != gt.shape[:2]:
        raise ValueError(f"visible {visible.shape} must be [T, J] = {gt.shape[:2]}")
    if lost_joints not in LOST_RULES:
        raise ValueError(f"lost_joints {lost_joints!r}: choose one of {LOST_RULES}")
    if lost_joints == "drop":
        visible = visible & ~np.isnan(pred).any(axis=-1)
    if np.isnan(gt[visible]).any():
        raise ValueError("gt holds NaN for a counted joint; mark it not visible instead")
    if skip_first:
        pred, gt, visible = pred[1:], gt[1:], visible[1:]

    # per-frame box of the counted GT joints
    big = np.where(visible[..., None], gt, np.nan)
    with warnings.catch_warnings():  # a frame with no counted joint is legitimate ("All-NaN slice")
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmin(big, axis=1)  # [T', 2], NaN for a frame with nothing counted
        hi = np.nanmax(big, axis=1)
    size = BOX_SCALE * np.linalg.norm(hi - lo, axis=-1)  # [T']

    dist = np.linalg.norm(pred - gt, axis=-1)  # [T', J], NaN where pred is missing
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = dist / size[:, None]
    norm = np.where(dist == 0, 0.0, norm)  # exact hit in a zero-size box: correct
    norm = np.where(np.isnan(dist), np.inf, norm)  # missing prediction: wrong at every alpha
    return np.where(visible, norm, np.nan)


def pck_from_distances(dist: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Per-joint and overall PCK (percent) from pooled normalised distances ``[N, J]`` (NaN = not counted).

    Returns ``(per_joint [J], overall)``: per-joint accuracy over its counted entries (NaN if none), and their
    mean over joint types that have any.
    """
    dist = np.asarray(dist, dtype=np.float64)
    counted = ~np.isnan(dist)
    correct = (np.where(counted, dist, np.inf) <= alpha) & counted
    n = counted.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(n > 0, 100.0 * correct.sum(axis=0) / np.maximum(n, 1), np.nan)
    overall = float(np.nanmean(per_joint)) if (n > 0).any() else float("nan")
    return per_joint, overall


def pck(
    pred: np.ndarray, gt: np.ndarray, alpha: float, visible: np.ndarray | None = None, lost_joints: str = "wrong"
) -> tuple[np.ndarray, float]:
    """PCK@alpha of one video: ``(per_joint [J] percent, overall percent)``; frame 0 is skipped."""
    return pck_from_distances(normalized_distances(pred, gt, visible, lost_joints=lost_joints), alpha)


def pck_table(
    videos: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]], alphas: Sequence[float] = (0.1, 0.2),
    lost_joints: str = "wrong",
) -> dict[float, tuple[np.ndarray, float]]:
    """PCK of a dataset, pooling every scored frame of every video per joint (CRW's ``eval_pck.py``).

    Args:
        videos: ``(pred [T, J, 2], gt [T, J, 2], visible [T, J] or None)`` per video (same J for all).
        alphas: thresholds.
        lost_joints: ``wrong`` or ``drop`` (see the module docstring).

    Returns:
        ``{alpha: (per_joint [J] percent, overall percent)}``.
    """
    parts = [normalized_distances(p, g, v, lost_joints=lost_joints) for p, g, v in videos]
    if not parts:
        raise ValueError("no videos to score")
    pooled = np.concatenate(parts, axis=0)
    return {float(a): pck_from_distances(pooled, float(a)) for a in alphas}

