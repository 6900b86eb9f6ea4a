"""DAVIS-2017 scores as pure functions of arrays: region similarity J, boundary F-measure, and their statistics.

Definitions follow the official ``davis2017-evaluation`` tool (semi-supervised task), checked against it to 1e-6:

- J is the intersection over union of two binary masks; two empty masks score 1.
- F compares 1-pixel boundaries: each boundary is dilated by a disk of radius ``ceil(0.008 * diagonal)`` pixels
  (8 px at 854x480); precision is the fraction of predicted boundary pixels within the dilated ground-truth
  boundary, recall the converse, F their harmonic mean. No boundary on either side gives P = R = 1.
- Per object and per measure: Mean over the scored frames, Recall = fraction of frames scoring more than 0.5, and
  Decay = mean of the first minus the mean of the last of 4 overlapping temporal bins.
- A sequence's objects are the indices 1..max of its first annotation (void 255 counts as background there and in
  every frame: the official semi-supervised evaluation passes no void mask). Frames 1..T-2 are scored.
- Global J-Mean and F-Mean average over all objects of all sequences; J&F-Mean is their average.

Nothing here reads or writes files; :mod:`propagate.datasets.davis` does that.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import cv2
import numpy as np

VOID = 255
BOUNDARY_THRESHOLD = 0.008  # boundary tolerance as a fraction of the image diagonal
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


def disk(radius: int) -> np.ndarray:
    """The structuring element the official tool dilates with, ``skimage.morphology.disk(radius)``: ``[2r+1, 2r+1]``
    uint8, 1 where ``dx^2 + dy^2 <= r^2`` (the same array, tested; built here, as importing scikit-image's
    morphology takes longer than scoring a sequence)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def region_similarity(annotation: np.ndarray, segmentation: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Jaccard index J per frame.

    Args:
        annotation: ``[T, H, W]`` (or ``[H, W]``) ground-truth mask of one object, any dtype (nonzero = object).
        segmentation: the predicted mask, same shape.
        void: optional mask of pixels left out of both intersection and union, same shape.

    Returns:
        ``[T]`` float64 (a 0-d array for ``[H, W]`` inputs); 1 where the union is empty.
    """
    annotation = np.asarray(annotation).astype(bool)
    segmentation = np.asarray(segmentation).astype(bool)
    _check_same_shape(annotation, segmentation, "segmentation")
    keep = np.ones_like(annotation) if void is None else ~_as_void(void, annotation)
    inter = np.sum(annotation & segmentation & keep, axis=(-2, -1))
    union = np.sum((annotation | segmentation) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union.astype(np.float64)
    return np.where(union == 0, 1.0, j)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary of a binary mask ``[H, W]`` -> ``[H, W]`` bool.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour (so the boundary
    sits half a pixel towards the origin). In the last row only the right neighbour counts, in the last column
    only the lower one, and the bottom-right pixel is never a boundary: the convention of the Berkeley
    ``seg2bmap`` used by DAVIS.
    """
    seg = np.asarray(mask).astype(bool)
    right = np.zeros_like(seg)
    below = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    below[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    edge = (seg != right) | (seg != below) | (seg != diag)
    edge[-1, :] = seg[-1, :] != right[-1, :]
    edge[:, -1] = seg[:, -1] != below[:, -1]
    edge[-1, -1] = False
    return edge


def boundary_tolerance(height: int, width: int, bound_th: float = BOUNDARY_THRESHOLD) -> int:
    """Dilation radius in pixels: ``ceil(bound_th * diagonal)``, or ``bound_th`` itself when it is >= 1."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def frame_f_measure(annotation: np.ndarray, segmentation: np.ndarray, void: np.ndarray | None = None,
                    bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """Boundary F-measure of one frame: ``annotation`` and ``segmentation`` are ``[H, W]`` binary masks."""
    annotation = np.asarray(annotation).astype(bool)
    segmentation = np.asarray(segmentation).astype(bool)
    _check_same_shape(annotation, segmentation, "segmentation")
    if void is not None:
        keep = ~_as_void(void, annotation)
        annotation, segmentation = annotation & keep, segmentation & keep
    gt_edge = boundary_map(annotation)
    pred_edge = boundary_map(segmentation)
    n_gt, n_pred = int(gt_edge.sum()), int(pred_edge.sum())

    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        kernel = disk(boundary_tolerance(*annotation.shape, bound_th=bound_th))  # uint8, dx^2 + dy^2 <= r^2
        gt_near = cv2.dilate(gt_edge.astype(np.uint8), kernel).astype(bool)
        pred_near = cv2.dilate(pred_edge.astype(np.uint8), kernel).astype(bool)
        precision = np.sum(pred_edge & gt_near) / float(n_pred)
        recall = np.sum(gt_edge & pred_near) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_f_measure(annotation: np.ndarray, segmentation: np.ndarray, void: np.ndarray | None = None,
                       bound_th: float = BOUNDARY_THRESHOLD) -> np.ndarray:
    """Boundary F-measure per frame.

    Args:
        annotation: ``[T, H, W]`` (or ``[H, W]``) ground-truth mask of one object.
        segmentation: the predicted mask, same shape.
        void: optional void pixels, same shape; they are cleared from both masks before taking boundaries.
        bound_th: tolerance as a fraction of the image diagonal (pixels if >= 1).

    Returns:
        ``[T]`` float64 (a 0-d array for ``[H, W]`` inputs).
    """
    annotation = np.asarray(annotation)
    segmentation = np.asarray(segmentation)
    _check_same_shape(annotation, segmentation, "segmentation")
    if annotation.ndim == 2:
        return np.asarray(frame_f_measure(annotation, segmentation, void, bound_th), dtype=np.float64)
    if annotation.ndim != 3:
        raise ValueError(f"boundary_f_measure takes [T, H, W] or [H, W] masks, got shape {annotation.shape}")
    return np.array([
        frame_f_measure(annotation[t], segmentation[t], None if void is None else void[t], bound_th)
        for t in range(annotation.shape[0])
    ], dtype=np.float64)


def decay_bins(num_frames: int, num_bins: int = DECAY_BINS) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` frame indices of the temporal bins used for Decay.

    Bin edges are ``round(linspace(1, N, bins + 1)) - 1`` (halves rounded up); bin i spans edge i to edge i+1
    inclusive, so neighbouring bins share a frame. For N = 10: (0, 2), (2, 5), (5, 7), (7, 9).
    """
    edges = (np.round(np.linspace(1, num_frames, num_bins + 1) + 1e-10) - 1).astype(np.int64)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(num_bins)]


def statistics(per_frame: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """``(mean, recall, decay)`` of one object's per-frame scores ``[N]``.

    Mean ignores NaNs; recall is the fraction of frames scoring more than 0.5; decay is the mean of the first
    temporal bin minus the mean of the last (see :func:`decay_bins`). An empty input gives NaNs.

    (The official tool stores bin edges as uint8, which wraps for sequences of more than 256 scored frames; no
    DAVIS sequence is that long. Here the edges never wrap.)
    """
    values = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > RECALL_THRESHOLD))
        bins = decay_bins(len(values))
        first = values[bins[0][0]:bins[0][1] + 1]
        last = values[bins[-1][0]:bins[-1][1] + 1]
        decay = float(np.nanmean(first) - np.nanmean(last))
    return mean, recall, decay


def count_objects(first_annotation: np.ndarray) -> int:
    """Number of objects of a sequence: the largest index in its first annotation ``[H, W]``, void excluded."""
    labels = np.asarray(first_annotation)
    labels = labels[labels != VOID]
    return int(labels.max()) if labels.size else 0


def score_sequence(gt: np.ndarray, pred: np.ndarray, num_objects: int) -> dict[str, Any]:
    """Score one sequence's predicted label maps against its annotations.

    Args:
        gt: ``[N, H, W]`` integer annotations of the scored frames (a sequence's frames 1..T-2); 255 = void,
            counted as background.
        pred: ``[N, H, W]`` predicted indices for the same frames, each in ``0..num_objects``.
        num_objects: K, from :func:`count_objects` on the sequence's first annotation.

    Returns:
        ``{"J": [K, N], "F": [K, N], "objects": [K dicts with J-Mean, J-Recall, J-Decay, F-Mean, F-Recall,
        F-Decay]}`` (object k + 1 in row k).
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim != 3:
        raise ValueError(f"gt must be [N, H, W], got shape {gt.shape}")
    _check_same_shape(gt, pred, "pred")
    if pred.size and int(pred.max()) > num_objects:
        raise ValueError(f"pred holds index {int(pred.max())} but the sequence has {num_objects} object(s)")
    n = gt.shape[0]
    j = np.zeros((num_objects, n))
    f = np.zeros((num_objects, n))
    objects = []
    for k in range(num_objects):
        gt_k, pred_k = gt == k + 1, pred == k + 1
        j[k] = region_similarity(gt_k, pred_k)
        f[k] = boundary_f_measure(gt_k, pred_k)
        jm, jr, jd = statistics(j[k])
        fm, fr, fd = statistics(f[k])
        objects.append({"J-Mean": jm, "J-Recall": jr, "J-Decay": jd, "F-Mean": fm, "F-Recall": fr, "F-Decay": fd})
    return {"J": j, "F": f, "objects": objects}


def global_scores(objects: Sequence[dict[str, float]]) -> dict[str, float]:
    """Global table (``GLOBAL_COLUMNS``) from per-object statistics: every column is a mean over objects."""
    if not objects:
        raise ValueError("no objects to average: score at least one sequence with at least one object")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        means = {key: float(np.mean([o[key] for o in objects])) for key in GLOBAL_COLUMNS[1:]}
    return {"J&F-Mean": (means["J-Mean"] + means["F-Mean"]) / 2.0, **means}


def _as_void(void: np.ndarray, like: np.ndarray) -> np.ndarray:
    void = np.asarray(void).astype(bool)
    _check_same_shape(like, void, "void")
    return void


def _check_same_shape(reference: np.ndarray, other: np.ndarray, name: str) -> None:
    if reference.shape != other.shape:
        raise ValueError(f"{name} has shape {other.shape} but the annotation has shape {reference.shape}")
