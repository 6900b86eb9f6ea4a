"""Label kinds: one codec per kind of label (masks, points), which the pipeline, the session and the jobs call.

Everything that differs between masks and points lives here, once, instead of in a branch in every layer:

- **keyframes**: what a keyframe gives (:meth:`LabelKind.check`: a mask ``[H, W]`` uint8, or points ``[J, 2]``),
  and whether a new keyframe may join the ones a session holds (:meth:`LabelKind.joins`);
- **encode**: every keyframe's labels on the feature grid ``[K, h, w]`` (:meth:`LabelKind.encode`);
- **decode**: soft labels back to a frame's result, with a confidence per track (:meth:`LabelKind.decode`); a
  keyframe's own result (:meth:`LabelKind.keyframe_result`);
- **tracks**: what confidences are reported for (object ids, point names: :meth:`LabelKind.tracks`);
- **results**: the drawing of a frame for the overlay (:meth:`LabelKind.draw`), what a ``run`` reads as its
  annotation (:meth:`LabelKind.read`) and the facts its summary reports. Which files are written for a kind is the
  writers' table (:mod:`propagate.writers`: each writer names the kinds it serves).

A codec is made for one video (it knows the frames' native size, and for points the point names):
``MaskKind.of(config, (W, H))``, ``PointKind.of(config, (W, H), points)``. :data:`KINDS` maps a kind's name (a
``Unit``'s or a manifest row's ``kind``) to its class.

Per-object rules live here too (masks: :meth:`MaskKind.rules`): a partial keyframe (a mask that annotates some
objects only) and objects marked absent from a frame on. The keyframe sweeps ask the rules two things
(:class:`KeyframeRules`): a partial keyframe's labels, its objects merged into the sweep's own propagated labels
there (:meth:`KeyframeRules.merge`), and a frame's labels with its absent objects cleared
(:meth:`KeyframeRules.clear`); the frame's reported result is the same merge of its decoded result
(:meth:`MaskKind.merged_result`), absent objects reported apart (:attr:`FrameResult.absent`). The session, the jobs
and the writers only pass the annotation through.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Mapping

import numpy as np
import torch

from propagate.config import Config, KeypointConfig, PropagationConfig
from propagate.errors import PropagateError
from propagate.keypoints import (
    CONVENTIONS,
    PointSet,
    check_points,
    check_points_inside,
    decode_keypoints,
    keypoint_heatmaps,
    pixels_to_grid,
    read_point_keyframes,
)
from propagate.labels import (
    KeyframeFile,
    check_mask,
    decode_mask,
    mask_to_labels,
    object_ids,
    paint_objects,
    read_keyframe_file,
    read_keyframes,
    remove_small_regions,
    require_objects,
    without_objects,
)
from propagate.render import caption, draw_points, overlay_mask
from propagate.video import VideoSource, processing_size

Track = int | str  # what a confidence is reported for: an object id (masks) or a point name (points)
JSON = dict[str, object]
# What a job is given as its annotation: a mask file or keyframe folder, a points file, a first mask [H, W],
# {frame: mask}, or first-frame points.
Given = str | Path | np.ndarray | Mapping[int, np.ndarray] | PointSet


@dataclass
class FrameResult:
    """One frame's result: a mask (masks) or points (points), with confidences.

    ``confidence``: per object id (masks; see :func:`propagate.labels.decode_mask`) or per point name (points: the
    peak of its map), 1 on keyframes. ``absent``: the objects marked absent on this frame (no pixel, and no
    confidence: they are not in ``confidence``).
    """

    index: int
    name: str
    keyframe: bool
    mask: np.ndarray | None = None  # [H, W] uint8
    xy: np.ndarray | None = None  # [J, 2] native pixels, NaN where lost
    confidence: dict[int | str, float] = field(default_factory=dict)
    absent: frozenset[int] = frozenset()

    def least_confidence(self) -> float:
        """The lowest confidence of any present object or point (1 if there is none)."""
        return min((v for k, v in self.confidence.items() if k not in self.absent), default=1.0)

    def without(self, absent: frozenset[int]) -> FrameResult:
        """This result with the objects ``absent`` marked absent: no pixel (made background), no confidence."""
        if not absent:
            return self
        mask = self.mask
        if mask is not None and np.isin(mask, list(absent)).any():
            mask = without_objects(mask, absent)
        confidence = {k: v for k, v in self.confidence.items() if k not in absent}
        return FrameResult(self.index, self.name, self.keyframe, mask, self.xy, confidence, self.absent | absent)


@dataclass(frozen=True)
class KeyframeRules:
    """The per-object rules of a set of keyframes, as the keyframe sweeps follow them
    (:class:`propagate.pipeline.Sweep`), made by the codec (:meth:`MaskKind.rules`).

    ``partial``: each partial keyframe -> the objects it gives (the other objects there go on being propagated).
    ``absent``: each frame -> the objects absent from it (a mark's frame up to the next keyframe that gives them).
    Two rules are the same on a frame (:meth:`same_at`) when both say the same there; what a rule does is
    :meth:`merge` and :meth:`clear`.
    """

    partial: Mapping[int, frozenset[int]] = field(default_factory=dict)
    absent: Mapping[int, frozenset[int]] = field(default_factory=dict)
    merger: Callable[[int, torch.Tensor | None], torch.Tensor] | None = None

    def merge(self, index: int, soft: torch.Tensor | None) -> torch.Tensor:
        """Partial keyframe ``index``'s labels ``[K, h, w]``: the objects it gives painted over ``soft [K, h, w]``
        (a sweep's own propagated labels there, decoded; None: nothing propagated, its objects alone)."""
        assert self.merger is not None
        return self.merger(index, soft)

    def clear(self, index: int, soft: torch.Tensor) -> torch.Tensor:
        """``soft [K, h, w]`` with the objects absent from frame ``index`` cleared (their share moved to the
        background label 0, so each cell still sums to what it did); ``soft`` itself if none is absent."""
        gone = self.absent.get(index)
        if not gone:
            return soft
        out = soft.clone()
        rows = sorted(gone)
        out[0] += out[rows].sum(0)
        out[rows] = 0
        return out

    def same_at(self, index: int, other: KeyframeRules | None) -> bool:
        """Whether ``other`` (None: no rules) says the same about frame ``index``."""
        other = other or NO_RULES
        return (self.partial.get(index) == other.partial.get(index)
                and self.absent.get(index, frozenset()) == other.absent.get(index, frozenset()))

    @property
    def empty(self) -> bool:
        return not self.partial and not self.absent


NO_RULES = KeyframeRules()


@dataclass
class Keyframes:
    """A job's annotation as read (:meth:`LabelKind.read`): the codec for the video, every keyframe's annotation
    (``{frame: annotation}``, in frame order), and the file or folder it came from (None: given in memory)."""

    kind: "LabelKind"
    frames: dict[int, np.ndarray]
    path: str | Path | None
    file: KeyframeFile | None = None  # masks: what the folder's keyframe file says (partial keyframes, absences)


class LabelKind(ABC):
    """The codec of one kind of label for one video. See the module docstring."""

    name: ClassVar[str]  # "masks" or "points": a Unit's kind, a key of KINDS
    noun: ClassVar[str]  # what one annotation is called in messages and run records ("mask", "points")
    task: ClassVar[str]  # the preset family its runs default to ("davis", "jhmdb")

    def __init__(self, native_size: tuple[int, int]):
        self.native_size = (int(native_size[0]), int(native_size[1]))  # (W, H) of the frames

    # -------------------------------------------------------------------------------------------- keyframes

    @abstractmethod
    def check(self, index: int, annotation: np.ndarray) -> np.ndarray:
        """Frame ``index``'s annotation, checked (a PropagateError naming the keyframe if it does not fit); the
        copy a session keeps."""

    def joins(self, other: LabelKind, index: int) -> None:
        """Refuse a keyframe on ``index`` whose codec is ``other`` when this codec holds the keyframes so far."""
        if type(other) is not type(self):
            raise PropagateError(f"this session holds {self.name} keyframes: a session labels masks or points, "
                                 "not both")

    @abstractmethod
    def tracks(self, keyframes: Mapping[int, np.ndarray]) -> list[Track]:
        """What confidences are reported for, given every keyframe's annotation (the confidence columns)."""

    # -------------------------------------------------------------------------------------------- encode, decode

    @abstractmethod
    def encode(self, keyframes: Mapping[int, np.ndarray], grid_hw: tuple[int, int]) -> dict[int, torch.Tensor]:
        """Every keyframe's labels ``[K, h, w]`` on the feature grid (the same K for all of them)."""

    @abstractmethod
    def keyframe_result(self, index: int, name: str, annotation: np.ndarray, labels: torch.Tensor) -> FrameResult:
        """A keyframe's own result (its annotation, confidence 1), given its labels ``[K, h, w]``."""

    def first_result(self, index: int, name: str, annotation: np.ndarray, labels: torch.Tensor) -> FrameResult:
        """The first frame's result when one keyframe on it is streamed through the video
        (:func:`propagate.pipeline.iter_results`); the keyframe's own result unless the kind says otherwise."""
        return self.keyframe_result(index, name, annotation, labels)

    @abstractmethod
    def decode(self, index: int, name: str, soft: torch.Tensor) -> FrameResult:
        """A propagated frame's result from its soft labels ``[K, h, w]``."""

    # -------------------------------------------------------------------------------------------- results

    @abstractmethod
    def draw(self, image: np.ndarray, result: FrameResult, text: str) -> np.ndarray:
        """The overlay frame of ``result`` on ``image [H, W, 3]`` uint8 RGB, captioned with ``text``."""

    @classmethod
    @abstractmethod
    def read(cls, given: Given, source: VideoSource, config: Config) -> Keyframes:
        """A ``run``'s annotation (a file, a folder or arrays; see the kind), read and checked against ``source``."""

    def counts(self) -> JSON:
        """Facts about the labels recorded in a results folder's manifest beside the frame count."""
        return {}

    def summary(self, last: FrameResult) -> JSON:
        """Facts a ``run`` reports about its results beside the frame count, given the last frame's result."""
        return self.counts()


# ------------------------------------------------------------------------------------------------------- masks


class MaskKind(LabelKind):
    """Masks: ``[H, W]`` uint8 (0 background, 1..N objects, 255 void), one-hot labels ``[N+1, h, w]`` on the grid
    (:func:`propagate.labels.mask_to_labels`), decoded by :func:`propagate.labels.decode_mask`."""

    name = "masks"
    noun = "mask"
    task = "davis"

    def __init__(self, propagation: PropagationConfig, native_size: tuple[int, int], proc_size: tuple[int, int],
                 min_area: int = 0):
        super().__init__(native_size)
        self.label_downsample = propagation.label_downsample
        self.minmax_norm = propagation.minmax_norm
        self.proc_size = (int(proc_size[0]), int(proc_size[1]))  # (W, H) the frames are resized to
        self.min_area = int(min_area)  # propagated regions smaller than this (native pixels) are removed (0: off)

    @classmethod
    def of(cls, config: Config, native_size: tuple[int, int]) -> MaskKind:
        return cls(config.propagation, native_size, processing_size(native_size, config.resize),
                   config.postprocess.min_area)

    def check(self, index: int, annotation: np.ndarray) -> np.ndarray:
        return check_mask(annotation, self.native_size, f"keyframe {index}")  # a uint8 copy

    def tracks(self, keyframes: Mapping[int, np.ndarray]) -> list[Track]:
        """The objects of every keyframe, sorted."""
        return sorted({o for m in keyframes.values() for o in object_ids(m)})

    def encode(self, keyframes: Mapping[int, np.ndarray], grid_hw: tuple[int, int]) -> dict[int, torch.Tensor]:
        """One-hot labels ``[N+1, h, w]``, N the highest object index of any keyframe."""
        ids = self.tracks(keyframes)
        if not ids:
            raise PropagateError("the keyframes hold no object (only background 0 / void 255): label at least "
                                 "one object 1..N")
        top = int(ids[-1])
        return {i: mask_to_labels(m, top, grid_hw, self.label_downsample) for i, m in sorted(keyframes.items())}

    def keyframe_result(self, index: int, name: str, annotation: np.ndarray, labels: torch.Tensor) -> FrameResult:
        return FrameResult(index, name, True, mask=annotation, confidence={o: 1.0 for o in range(1, labels.shape[0])})

    def decode(self, index: int, name: str, soft: torch.Tensor) -> FrameResult:
        """The propagated mask, its regions smaller than ``postprocess.min_area`` removed (an object left with no
        pixel has confidence 0)."""
        (proc_w, proc_h), (w, h) = self.proc_size, self.native_size
        mask, confidence = decode_mask(soft, (proc_h, proc_w), (h, w), self.minmax_norm)
        cleaned = remove_small_regions(mask, self.min_area)
        if cleaned is not mask:
            kept = set(object_ids(cleaned))
            confidence = {o: (c if o in kept else 0.0) for o, c in confidence.items()}
        return FrameResult(index, name, False, mask=cleaned, confidence=dict(confidence))

    # -------------------------------------------------------------------------------------------- per object

    def given(self, annotation: np.ndarray, objects: frozenset[int] | None) -> list[int]:
        """The objects a keyframe gives: those of its mask (a full keyframe), or ``objects`` (a partial one)."""
        return object_ids(annotation) if objects is None else sorted(objects)

    def rules(self, keyframes: Mapping[int, np.ndarray], partial: Mapping[int, frozenset[int]],
              absent: Mapping[int, frozenset[int]], grid_hw: tuple[int, int], num_frames: int) -> KeyframeRules:
        """The sweeps' rules (:class:`KeyframeRules`) of ``keyframes`` (``{frame: mask}``; a partial keyframe's mask
        holds its objects only), the partial ones ``partial`` (``{frame: objects}``) and the absence marks ``absent``
        (``{frame: objects absent from there}``): an object marked absent on frame t is absent from t up to its
        next keyframe that gives it (a full keyframe holding it, or a partial one naming it), or to the last of
        ``num_frames``."""
        top = int(max(self.tracks(keyframes), default=0))
        frames = sorted(keyframes)
        gone: dict[int, set[int]] = {}
        for start, objects in absent.items():
            for obj in objects:
                ends = [k for k in frames if k > start and obj in self.given(keyframes[k], partial.get(k))]
                for t in range(start, ends[0] if ends else num_frames):
                    gone.setdefault(t, set()).add(obj)
        absent_at = {t: frozenset(v) for t, v in sorted(gone.items())}

        def merger(index: int, soft: torch.Tensor | None) -> torch.Tensor:
            merged = self.merge_masks(index, keyframes[index], partial[index], soft, absent_at.get(index, frozenset()))
            return mask_to_labels(merged, top, grid_hw, self.label_downsample)

        return KeyframeRules(dict(partial), absent_at, merger)

    def merge_masks(self, index: int, annotation: np.ndarray, objects: frozenset[int], soft: torch.Tensor | None,
                    absent: frozenset[int]) -> np.ndarray:
        """A partial keyframe's mask ``[H, W]`` uint8: ``soft [K, h, w]`` decoded (None: empty), the objects it
        gives and those absent removed from it (made background), then the given objects painted from
        ``annotation``."""
        w, h = self.native_size
        if soft is None:
            base = np.zeros((h, w), np.uint8)
        else:
            proc_w, proc_h = self.proc_size
            base = decode_mask(soft, (proc_h, proc_w), (h, w), self.minmax_norm)[0]
        return paint_objects(base, annotation, objects, clear=absent)

    def merged_result(self, index: int, name: str, annotation: np.ndarray, objects: frozenset[int],
                      soft: torch.Tensor | None, absent: frozenset[int]) -> FrameResult:
        """A partial keyframe's reported result: its decoded (blended) propagated result ``soft [K, h, w]`` (None:
        nothing propagated reaches it) merged as :meth:`merge_masks` merges, the given objects with confidence 1."""
        w, h = self.native_size
        if soft is None:
            decoded = FrameResult(index, name, True, mask=np.zeros((h, w), np.uint8))
        else:
            decoded = self.decode(index, name, soft)
        assert decoded.mask is not None
        mask = paint_objects(decoded.mask, annotation, objects, clear=absent)
        confidence: dict[int | str, float] = {o: c for o, c in decoded.confidence.items() if o not in objects}
        confidence.update({o: 1.0 for o in objects})
        result = FrameResult(index, name, True, mask=mask, confidence=dict(sorted(confidence.items())))
        return result.without(absent)

    def draw(self, image: np.ndarray, result: FrameResult, text: str) -> np.ndarray:
        assert result.mask is not None
        tag = " | keyframe" if result.keyframe else ""
        return caption(overlay_mask(image, result.mask), f"{text} | frame {result.index}{tag}")

    @classmethod
    def read(cls, given: Given, source: VideoSource, config: Config) -> Keyframes:
        """A mask file (frame 0), a folder of keyframe masks named like frames
        (:func:`propagate.labels.read_keyframes`, with its keyframe file: :func:`propagate.labels.read_keyframe_file`),
        the first frame's ``[H, W]`` uint8 indices, or ``{frame: mask}``."""
        if isinstance(given, PointSet):
            raise PropagateError("points were given where a mask was expected: give a mask PNG or a folder of them")
        if isinstance(given, (str, Path)):
            frames = read_keyframes(given, source.names, source.native_size)
            read = read_keyframe_file(given, source.names, frames) if Path(given).is_dir() else None
            if read is not None:
                return Keyframes(cls.of(config, source.native_size), read[0], given, read[1])
            return Keyframes(cls.of(config, source.native_size), frames, given)
        frames = {0: given} if isinstance(given, np.ndarray) else dict(sorted(given.items()))
        require_objects(np.concatenate([m.ravel() for m in frames.values()]), "first mask")
        return Keyframes(cls.of(config, source.native_size), frames, None)


# ------------------------------------------------------------------------------------------------------- points


class PointKind(LabelKind):
    """Points: ``[J, 2]`` native pixels (x, y; NaN: no label), Gaussian heatmaps ``[1 + J, h, w]`` on the grid
    (:func:`propagate.keypoints.keypoint_heatmaps`), decoded by :func:`propagate.keypoints.decode_keypoints`.

    ``points`` gives the names (default ``p1``, ``p2``, ... for as many points as a keyframe gives) and the skeleton
    edges; every keyframe gives the same points.
    """

    name = "points"
    noun = "points"
    task = "jhmdb"

    def __init__(self, keypoints: KeypointConfig, native_size: tuple[int, int], points: PointSet | None = None):
        super().__init__(native_size)
        if keypoints.decode_topk < 1:
            raise PropagateError(f"keypoints.decode_topk must be >= 1, got {keypoints.decode_topk}")
        if keypoints.cell_convention not in CONVENTIONS:
            raise PropagateError(f"keypoints.cell_convention {keypoints.cell_convention!r}: choose one of "
                                 f"{', '.join(CONVENTIONS)}")
        self.keypoints = keypoints
        self.names: list[str] | None = list(points.names) if points is not None else None
        self.edges: list[tuple[int, int]] = list(points.edges) if points is not None else []
        self.tracked: np.ndarray | None = None  # [J] bool, set by first_result: the point has a label on the grid

    @classmethod
    def of(cls, config: Config, native_size: tuple[int, int], points: PointSet | None = None) -> PointKind:
        return cls(config.keypoints, native_size, points)

    def point_names(self, count: int) -> list[str]:
        """The names of ``count`` points: those given, or ``p1``, ``p2``, ..."""
        return self.names if self.names is not None else [f"p{j + 1}" for j in range(count)]

    def check(self, index: int, annotation: np.ndarray) -> np.ndarray:
        xy = np.asarray(annotation, dtype=np.float64).reshape(-1, 2)
        names = self.point_names(len(xy))
        if len(names) != len(xy):
            raise PropagateError(f"keyframe {index}: {len(xy)} points but {len(names)} names")
        return check_points(names, xy, self.native_size, f"keyframe {index}").copy()

    def joins(self, other: LabelKind, index: int) -> None:
        super().joins(other, index)
        assert isinstance(other, PointKind)
        if other.names is not None and self.names is not None and other.names != self.names:
            raise PropagateError(f"keyframe {index} gives points {', '.join(other.names)} but the session tracks "
                                 f"{', '.join(self.names)}: every keyframe must give the same points")

    def tracks(self, keyframes: Mapping[int, np.ndarray]) -> list[Track]:
        """The point names."""
        count = len(next(iter(keyframes.values()))) if keyframes else 0
        return list(self.point_names(count))

    def heatmaps(self, xy: np.ndarray, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Labels ``[1 + J, h, w]`` of points ``xy [J, 2]`` (native pixels)."""
        kp = self.keypoints
        return keypoint_heatmaps(pixels_to_grid(xy, self.native_size, grid_hw, kp.cell_convention), grid_hw, kp.sigma)

    def locate(self, soft: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Points ``[J, 2]`` (NaN if lost) and confidences ``[J]`` from soft labels ``[1 + J, h, w]``."""
        kp = self.keypoints
        return decode_keypoints(soft, self.native_size, kp.decode_topk, kp.cell_convention)

    def encode(self, keyframes: Mapping[int, np.ndarray], grid_hw: tuple[int, int]) -> dict[int, torch.Tensor]:
        return {i: self.heatmaps(xy, grid_hw) for i, xy in sorted(keyframes.items())}

    def keyframe_result(self, index: int, name: str, annotation: np.ndarray, labels: torch.Tensor) -> FrameResult:
        names = self.point_names(len(annotation))
        return FrameResult(index, name, True, xy=annotation, confidence={n: 1.0 for n in names})

    def first_result(self, index: int, name: str, annotation: np.ndarray, labels: torch.Tensor) -> FrameResult:
        """The given points with confidence 1, except points whose heatmap is empty (off the grid, or NaN), which
        cannot be propagated: NaN with confidence 0 (recorded in :attr:`tracked`)."""
        self.tracked = (labels[1:].flatten(1).sum(1) > 0).numpy()
        first = np.asarray(annotation, dtype=np.float64).copy()
        first[~self.tracked] = np.nan
        names = self.point_names(len(first))
        return FrameResult(index, name, True, xy=first, confidence=dict(zip(names, map(float, self.tracked))))

    def decode(self, index: int, name: str, soft: torch.Tensor) -> FrameResult:
        xy, peak = self.locate(soft)
        return FrameResult(index, name, False, xy=xy, confidence=dict(zip(self.point_names(len(xy)), map(float, peak))))

    def confidences(self, result: FrameResult) -> np.ndarray:
        """``[J]`` confidences of a result, in point order."""
        assert result.xy is not None
        return np.array([result.confidence[n] for n in self.point_names(len(result.xy))])

    def draw(self, image: np.ndarray, result: FrameResult, text: str) -> np.ndarray:
        assert result.xy is not None
        drawn = draw_points(image, result.xy, self.point_names(len(result.xy)), self.edges, self.confidences(result))
        return caption(drawn, f"{text} | frame {result.index}")

    @classmethod
    def read(cls, given: Given, source: VideoSource, config: Config) -> Keyframes:
        """A points file (frame 0's points, or points on several keyframes:
        :func:`propagate.keypoints.read_point_keyframes`), each keyframe's points checked to lie in the frame, or a
        :class:`PointSet` of the first frame."""
        if isinstance(given, PointSet):
            return Keyframes(cls.of(config, source.native_size, given), {0: given.xy}, None)
        if not isinstance(given, (str, Path)):
            raise PropagateError("masks were given where points were expected: give a points file (JSON or CSV)")
        points, frames = read_point_keyframes(given, source.names)
        for index, xy in frames.items():
            where = f"{given} (frame {source.names[index]})"
            check_points_inside(PointSet(points.names, xy), source.native_size, where)
        return Keyframes(cls.of(config, source.native_size, points), frames, given)

    def counts(self) -> JSON:
        return {"points": len(self.names or [])}

    def summary(self, last: FrameResult) -> JSON:
        """The point count, and how many points are lost on the last frame."""
        assert last.xy is not None
        lost = int((~np.isfinite(np.asarray(last.xy, dtype=np.float64)).all(axis=1)).sum())
        return {**self.counts(), "lost_last_frame": lost}


KINDS: dict[str, type[LabelKind]] = {kind.name: kind for kind in (MaskKind, PointKind)}


def kind_named(name: str) -> type[LabelKind]:
    """The codec class of a kind's name (``masks``, ``points``)."""
    if name not in KINDS:
        raise PropagateError(f"label kind {name!r}: choose one of {', '.join(KINDS)}")
    return KINDS[name]

