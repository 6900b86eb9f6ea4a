"""A labelling session over one video (SAM 2's shape): features computed once, keyframes added and removed on any
frame, results streamed; a correction costs propagation only.

>>> s = Session("clip.mp4", load_config("davis_baseline"))
>>> s.add_mask(0, first_mask)                       # [H, W] uint8: 0 background, 1..N objects
>>> for index, result in s.propagate():             # every frame, in order
...     write_mask(f"out/{result.name}.png", result.mask)
>>> s.add_mask(40, corrected)                       # a correction (or an object entering) at frame 40
>>> for index, result in s.propagate(): ...         # no extraction; frames that cannot change are not recomputed
>>> s.add_mask(60, fixed, objects=[2])              # object 2 only: the other objects go on being propagated there
>>> s.set_absent(75, 1)                             # object 1 leaves: no pixel from frame 75 to its next keyframe

Keyframes (DESIGN section 9): each keyframe's annotation is its own result and joins the permanent context when a
sweep reaches it; frames before the first keyframe are propagated backward from it, frames after the last forward,
and a frame between two keyframes gets both directions' soft labels blended by temporal distance
(:func:`propagate.pipeline.blend_weights`), then decoded. One keyframe on frame 0 gives exactly the single-mask
results of :func:`propagate.pipeline.run_masks`.

Per object (masks): a keyframe is the whole frame's truth unless it names its objects (``add_mask(t, mask,
objects=[2])``, a partial keyframe): then, where a sweep reaches it, its propagated labels are decoded, the named
objects' old pixels made background, and the named objects painted from the mask; that merge joins the context, and
the frame's result is the same merge of its (blended) propagated result (:class:`propagate.kinds.KeyframeRules`).
``set_absent(t, obj)``: the object has no pixel from frame t up to its next keyframe that gives it, in both sweeps
and in the labels that join the context; its results report it absent (:attr:`FrameResult.absent`), not as a
confidence. Objects have names and categories (:attr:`Session.objects`, :meth:`Session.name_object`).

Features are kept in memory up to ``memory_bytes`` (float32, exact); beyond that they go to a scratch folder the
session creates and removes (:meth:`Session.close`), so results never depend on where features were kept. Given
``frame_bytes`` (the app gives :data:`FRAME_BYTES`), the frames the first pass decodes are kept the same way, so
:meth:`Session.image` of any frame is then a read, not a decode from the video's keyframe before it (which costs up to
a group of pictures: 250 frames in an H.264 file); a job that never shows frames keeps none.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from propagate.candidates import CandidateStore
from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore, iter_features
from propagate.keypoints import PointSet
from propagate.kinds import NO_RULES, FrameResult, KeyframeRules, LabelKind, MaskKind, PointKind, Track
from propagate.labels import VOID, ObjectInfo, default_object, object_ids, paint_objects, without_objects
from propagate.pipeline import Sweep, as_source, check_length, propagate_keyframes
from propagate.progress import Bars, Progress
from propagate.video import VideoSource, processing_size

MEMORY_BYTES = 4 * 2**30  # features kept in memory before the session spills them to its scratch folder
FRAME_BYTES = 1 * 2**30  # the app's frame_bytes: decoded frames kept in memory before spilling to scratch


class _FeatureMemory:
    """Features ``[C, h, w]`` (or frames ``[H, W, 3]`` uint8) of every frame, in memory up to a budget, then as files
    in a scratch folder (named ``prefix``...). One thread may put while another gets (the app extracts in a
    thread while the page reads frames): a file appears whole, under its name, or not at all."""

    def __init__(self, budget: int, prefix: str = "propagate-session-"):
        self.budget = budget
        self.prefix = prefix
        self.used = 0
        self.ram: dict[int, torch.Tensor] = {}
        self.scratch: Path | None = None
        self._lock = threading.Lock()  # one put at a time: one scratch folder, the budget counted once

    def __contains__(self, index: int) -> bool:
        return index in self.ram or (self.scratch is not None and (self.scratch / f"{index}.pt").is_file())

    def put(self, index: int, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        with self._lock:
            if index in self.ram:
                return
            if self.used + size <= self.budget:
                self.ram[index] = feats
                self.used += size
                return
            if self.scratch is None:
                self.scratch = Path(tempfile.mkdtemp(prefix=self.prefix))
            part = self.scratch / f"{index}.pt.part"
            torch.save(feats.cpu(), part)
            os.replace(part, self.scratch / f"{index}.pt")

    def get(self, index: int) -> torch.Tensor:
        if index in self.ram:
            return self.ram[index]
        assert self.scratch is not None
        return torch.load(self.scratch / f"{index}.pt", weights_only=True)

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)  # the folder this object created
            self.scratch = None


class Session:
    """Keyframes and results of one video. See the module docstring.

    Args:
        video: a frame folder, a video file, or an open :class:`VideoSource`.
        config: run configuration (propagation, keypoints, resize, keyframes: direction and blend).
        extractor: a ready extractor; built from ``config`` if None.
        cache: a feature store (:class:`propagate.cache.FeatureCache`) to read features from / write them to.
        memory_bytes: features kept in memory before spilling to a scratch folder.
        frame_bytes: keep the decoded frames (for :meth:`image`): this many bytes in memory, the rest in a scratch
            folder; None (default) keeps none (each :meth:`image` seeks).
    """

    def __init__(self, video: str | Path | VideoSource, config: Config, *, extractor: FeatureExtractor | None = None,
                 cache: FeatureStore | None = None, memory_bytes: int = MEMORY_BYTES, frame_bytes: int | None = None,
                 progress: bool = False):
        self.source = as_source(video)
        check_length(self.source)
        self.config = config
        self.extractor = extractor or build_extractor(config.features, config.extractor)
        self.cache = cache
        self.progress = progress
        self.names = list(self.source.names)
        self.native_size = self.source.native_size
        self.proc_size = processing_size(self.native_size, config.resize)
        self.codec: LabelKind | None = None  # the label kind of the keyframes (propagate.kinds), set by the first
        self._annotations: dict[int, np.ndarray] = {}  # frame -> its annotation, as the codec checked it
        self._propagated: dict[int, np.ndarray] = {}  # the keyframes of the latest results
        self._partial: dict[int, frozenset[int]] = {}  # partial keyframe -> the objects it gives (masks)
        self._absent: dict[int, set[int]] = {}  # frame -> the objects marked absent from it on
        self._names: dict[int, ObjectInfo] = {}  # objects named by name_object
        self._rules: KeyframeRules = NO_RULES  # the per-object rules of the latest results
        self._features = _FeatureMemory(memory_bytes)
        # [H, W, 3] uint8 as read, for image(); None: frames are not kept
        self._frames = None if frame_bytes is None else _FeatureMemory(frame_bytes, "propagate-frames-")
        # with propagation.reuse, both directions keep each frame's top-k candidates (a correction costs a gather)
        self._candidates = CandidateStore() if config.propagation.reuse else None
        self._sweeps = (Sweep(config.propagation, store=self._candidates),
                        Sweep(config.propagation, store=self._candidates))
        self.results: dict[int, FrameResult] = {}
        self._decoded: dict[int, tuple[torch.Tensor, FrameResult]] = {}  # frame -> soft labels, their result
        # affinities: (frame, context frame) pairs scored; reused: taken from the kept candidates instead
        self.stats = {"extractor_frames": 0, "propagated_frames": 0, "affinities": 0, "affinities_reused": 0}

    @property
    def num_frames(self) -> int:
        return len(self.names)

    @property
    def keyframes(self) -> list[int]:
        return sorted(self._annotations)

    @property
    def kind(self) -> str | None:
        """``masks`` or ``points``: the label kind of the keyframes (None before the first)."""
        return self.codec.name if self.codec is not None else None

    @property
    def point_names(self) -> list[str]:
        """The names of the points the keyframes give (none for masks)."""
        return list(self.codec.names or []) if isinstance(self.codec, PointKind) else []

    # ------------------------------------------------------------------------------------------ features, frames

    def extract(self, progress_callback: Callable[[int, int], None] | None = None, *,
                callback: Progress | None = None) -> None:
        """Compute (or read from the cache) the features of every frame not held yet: the first pass's extraction.
        ``progress_callback(done, total)``, or ``callback("extract", done, total)`` (:mod:`propagate.progress`), is
        called after each frame."""
        if all(i in self._features for i in range(self.num_frames)):
            return
        counter = _Counting(self.extractor)
        stream = iter_features(self.source, counter, self.config.resize, self.config.batch_frames, self.cache)
        report, bars = self._reporter(callback)
        try:
            for frame, feats in stream:
                if frame.index not in self._features:
                    self._features.put(frame.index, feats)
                if self._frames is not None and frame.index not in self._frames:
                    self._frames.put(frame.index, torch.from_numpy(frame.image))
                report("extract", frame.index + 1, self.num_frames)
                if progress_callback is not None:
                    progress_callback(frame.index + 1, self.num_frames)
        finally:
            bars.close()
        self.stats["extractor_frames"] += counter.frames

    def _reporter(self, callback: Progress | None) -> tuple[Progress, Bars]:
        """A progress callback that shows bars on stderr (if the session was made with ``progress``) and calls
        ``callback``; and the bars, to clear them if the pass stops early."""
        bars = Bars(enabled=self.progress)

        def report(phase: str, done: int, total: int) -> None:
            bars(phase, done, total)
            if callback is not None:
                callback(phase, done, total)

        return report, bars

    def features(self, index: int) -> torch.Tensor:
        """Features ``[C, h, w]`` of frame ``index`` (every frame's are extracted on first use, then kept)."""
        self._check_index(index)
        if index not in self._features:
            self.extract()
        return self._features.get(index)

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``[H, W, 3]`` uint8 RGB at native size: kept since the first pass read it, or read by
        seeking (not from frame 0 on) and kept from then on (with ``frame_bytes``; without, always read by seeking)."""
        self._check_index(index)
        if self._frames is None:
            return self.source.frame(index)
        if index not in self._frames:
            self._frames.put(index, torch.from_numpy(self.source.frame(index)))
        return self._frames.get(index).numpy().copy()  # a copy: the kept frame stays as read

    def annotation(self, index: int) -> np.ndarray:
        """Keyframe ``index``'s annotation as given: a mask ``[H, W]`` uint8 or points ``[J, 2]`` (read-only)."""
        if index not in self._annotations:
            raise self._not_a_keyframe(index)
        view = self._annotations[index].view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------------------------------ keyframes

    def add_mask(self, index: int, mask: np.ndarray, objects: Sequence[int] | None = None) -> None:
        """Make frame ``index`` a keyframe with ``mask [H, W]`` uint8 (0 background, 1..N objects, 255 void).

        ``objects`` None: the mask is the whole frame's truth (a full keyframe, replacing any keyframe there). A list:
        the mask annotates those objects only (each must have pixels in it); the frame's other objects go on being
        propagated. On a frame that is a keyframe already, the named objects replace theirs there (a full keyframe
        stays full). Giving an object drops its absence mark on this frame.
        """
        codec = MaskKind.of(self.config, self.native_size)
        if objects is None:
            self.add(index, mask, codec)
            self._drop_marks(index, object_ids(self._annotations[index]))
            return
        self._check_index(index)
        checked = codec.check(index, mask)
        named = self._object_list(objects, f"keyframe {index}")
        missing = [o for o in named if not (checked == o).any()]
        if missing:
            raise PropagateError(f"keyframe {index}: object {missing[0]} has no pixel in the mask: paint it, or say "
                                 "it is not in the frame with set_absent")
        if self.codec is not None:
            self.codec.joins(codec, index)
        old = self._annotations.get(index)
        if old is None or index in self._partial:  # a full keyframe stays full
            self._partial[index] = self._partial.get(index, frozenset()) | frozenset(named)
        self._annotations[index] = paint_objects(np.zeros_like(checked) if old is None else old, checked, named)
        self.codec = self.codec or codec
        self._drop_marks(index, named)

    def add_points(self, index: int, xy: np.ndarray, names: Sequence[str] | None = None) -> None:
        """Make frame ``index`` a keyframe with points ``xy [J, 2]`` (native pixels). Every keyframe gives the same
        points (``names``, default those of the first call, or ``p1``, ``p2``, ...)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        names = list(names) if names is not None else (self.point_names or [f"p{j + 1}" for j in range(len(xy))])
        self.add(index, xy, PointKind.of(self.config, self.native_size, PointSet(names, xy)))

    def add(self, index: int, annotation: np.ndarray, kind: LabelKind) -> None:
        """Make frame ``index`` a keyframe with ``annotation`` of label kind ``kind`` (its codec for this video: a
        mask for :class:`~propagate.kinds.MaskKind`, points for :class:`~propagate.kinds.PointKind`). Every
        keyframe of a session is of one kind (and, for points, gives the same points)."""
        self._check_index(index)
        if self.codec is not None:
            self.codec.joins(kind, index)
        codec = self.codec or kind
        self._annotations[index] = codec.check(index, annotation)
        self._partial.pop(index, None)
        self.codec = codec

    def remove(self, index: int, objects: Sequence[int] | None = None) -> None:
        """Frame ``index`` is a keyframe no more (``objects`` None: the keyframe and its absence marks go), or it no
        longer says anything about ``objects``: they leave its keyframe (which becomes a partial keyframe of the
        others, or goes when none is left) and their absence marks there go."""
        if objects is None:
            if index not in self._annotations and index not in self._absent:
                raise self._not_a_keyframe(index)
            self._annotations.pop(index, None)
            self._partial.pop(index, None)
            self._absent.pop(index, None)
        else:
            named = self._object_list(objects, f"frame {index}")
            old = self._annotations.get(index)
            gives = set(object_ids(old)) if old is not None and index not in self._partial else set()
            gives |= set(self._partial.get(index, ()))
            unknown = [o for o in named if o not in gives and o not in self._absent.get(index, ())]
            if unknown:
                raise PropagateError(f"frame {index} neither gives object {unknown[0]} nor marks it absent "
                                     f"(keyframes: {self.keyframes}; absence marks: {self.absent_marks()})")
            if old is not None and gives & set(named):
                left = sorted(gives - set(named))
                if left:
                    self._annotations[index] = without_objects(old, named)
                    self._partial[index] = frozenset(left)
                else:
                    del self._annotations[index]
                    self._partial.pop(index, None)
            self._drop_marks(index, named)
        if not self._annotations:
            self.codec = None

    def set_absent(self, index: int, obj: int) -> None:
        """Object ``obj`` is not in the frame from ``index`` up to its next keyframe that gives it: no pixel there
        (in both sweeps, and in the labels that join the context), no COCO segment, reported absent
        (:attr:`FrameResult.absent`). On a keyframe that gives it, it leaves that keyframe (the latest word wins)."""
        self._check_index(index)
        if self.codec is not None and not isinstance(self.codec, MaskKind):
            raise PropagateError("absence marks are for masks: this session tracks points")
        (obj,) = self._object_list([obj], f"frame {index}")
        if index in self._annotations:
            old = self._annotations[index]
            if index in self._partial and obj in self._partial[index]:
                self.remove(index, [obj])
            elif index not in self._partial and (old == obj).any():
                left = without_objects(old, [obj])  # a full keyframe stays full
                if object_ids(left):
                    self._annotations[index] = left
                else:  # nothing left on it: the keyframe goes
                    del self._annotations[index]
                    self.codec = self.codec if self._annotations else None
        self._absent.setdefault(index, set()).add(obj)

    def keyframe_objects(self, index: int) -> list[int] | None:
        """The objects keyframe ``index`` gives if it is a partial keyframe; None for a full keyframe."""
        if index not in self._annotations:
            raise self._not_a_keyframe(index)
        return sorted(self._partial[index]) if index in self._partial else None

    def absent_marks(self) -> dict[int, list[int]]:
        """``{frame: objects marked absent from it on}``, in frame order."""
        return {t: sorted(objs) for t, objs in sorted(self._absent.items()) if objs}

    def is_absent(self, index: int, obj: int) -> bool:
        """Whether the latest results report object ``obj`` absent from frame ``index``."""
        result = self.results.get(index)
        return result is not None and obj in result.absent

    @property
    def objects(self) -> dict[int, ObjectInfo]:
        """Every object of the keyframes (and every named one): ``{id: ObjectInfo(name, category)}``; an object
        nobody named is ``object N`` of category ``object``."""
        ids = set(self._names)
        if isinstance(self.codec, MaskKind):
            ids |= {int(o) for o in self.codec.tracks(self._annotations)}
        return {o: self._names.get(o, default_object(o)) for o in sorted(ids)}

    def name_object(self, obj: int, name: str, category: str | None = None) -> None:
        """Name object ``obj`` (and set its category; None keeps the one it has, ``object`` by default)."""
        (obj,) = self._object_list([obj], "name_object")
        if not isinstance(name, str) or not name.strip():
            raise PropagateError(f"object {obj}: give a name (a non-empty string), not {name!r}")
        if category is not None and (not isinstance(category, str) or not category.strip()):
            raise PropagateError(f"object {obj}: give a category (a non-empty string), not {category!r}")
        old = self._names.get(obj, default_object(obj))
        self._names[obj] = ObjectInfo(name.strip(), category.strip() if category is not None else old.category)

    def _not_a_keyframe(self, index: int) -> PropagateError:
        return PropagateError(f"frame {index} is not a keyframe (keyframes: {self.keyframes})")

    def _drop_marks(self, index: int, objects: Sequence[int]) -> None:
        marks = self._absent.get(index)
        if marks:
            marks.difference_update(objects)
            if not marks:
                del self._absent[index]

    @staticmethod
    def _object_list(objects: Sequence[int], where: str) -> list[int]:
        ids = [objects] if isinstance(objects, (int, np.integer)) else list(objects)
        bad = [o for o in ids if not isinstance(o, (int, np.integer)) or isinstance(o, bool) or not 0 < o < VOID]
        if bad or not ids:
            raise PropagateError(f"{where}: object {bad[0] if bad else '(none)'!r} is not an object id: give ids "
                                 "1..254")
        return sorted({int(o) for o in ids})

    # ------------------------------------------------------------------------------------------ propagation

    def propagate(self, direction: str | None = None,
                  callback: Progress | None = None) -> Iterator[tuple[int, FrameResult]]:
        """Yield ``(index, FrameResult)`` for every frame in order, from the current keyframes.

        ``direction``: ``auto`` (default: ``config.keyframes.direction``), ``forward``, ``backward`` or ``both``.
        Features are extracted on the first call only; later calls recompute only the frames whose result the
        changed keyframes can change.

        ``callback(phase, done, total)`` is called as each phase advances: ``extract``, ``backward`` (the backward
        sweep, run whole before the first result), then ``forward`` (``decode`` without a forward sweep) as
        results are yielded (:mod:`propagate.progress`; :class:`propagate.progress.PhaseClock` gives an ETA).
        A session made with ``progress=True`` also shows one bar per phase on stderr.
        """
        if not self._annotations:
            raise PropagateError("no keyframe: add a mask (add_mask) or points (add_points) on some frame first")
        direction = direction or self.config.keyframes.direction
        self.extract(callback=callback)
        assert self.codec is not None
        grid_hw = tuple(self.features(self.keyframes[0]).shape[1:])
        labels = self.codec.encode(self._annotations, grid_hw)
        self._rules = self._make_rules(grid_hw)
        report, bars = self._reporter(callback)
        stream = propagate_keyframes(self.features, self.num_frames, labels, self.config.propagation, direction,
                                     self.config.keyframes.blend, self._sweeps, self._rules, progress=report)
        self.results, self._propagated = {}, dict(self._annotations)
        decoded, self._decoded = self._decoded, {}
        try:
            for index, soft, is_key in stream:
                earlier = decoded.get(index)
                if earlier is not None and earlier[0] is soft and not is_key:
                    result = earlier[1]  # a frame a sweep replayed: the same soft labels, so the same result
                else:
                    result = self._decode(index, soft, is_key)
                self._decoded[index] = (soft, result)
                self.results[index] = result
                yield index, result
        finally:
            bars.close()
        self.stats["propagated_frames"] += sum(s.propagated for s in self._sweeps)
        self.stats["affinities"] += sum(s.affinities for s in self._sweeps)
        if self._candidates is not None:
            self.stats["affinities_reused"] += self._candidates.reused
            self._candidates.reset_counts()

    def _make_rules(self, grid_hw: tuple[int, int]) -> KeyframeRules:
        """The per-object rules of the keyframes and absence marks (:meth:`MaskKind.rules`); none for plain ones."""
        marks = {t: frozenset(objs) for t, objs in self._absent.items() if objs}
        if not self._partial and not marks:
            return NO_RULES
        assert isinstance(self.codec, MaskKind)
        known = set(self.codec.tracks(self._annotations))
        for t, objs in sorted(marks.items()):
            stray = sorted(objs - known)
            if stray:
                raise PropagateError(f"frame {t} marks object {stray[0]} absent, but no keyframe gives it: remove the "
                                     f"mark (remove({t}, objects=[{stray[0]}])) or add a keyframe with it")
        return self.codec.rules(self._annotations, self._partial, marks, grid_hw, self.num_frames)

    def _decode(self, index: int, soft: torch.Tensor, is_key: bool) -> FrameResult:
        assert self.codec is not None
        absent = self._rules.absent.get(index, frozenset())
        if is_key and index in self._partial:
            assert isinstance(self.codec, MaskKind)
            return self.codec.merged_result(index, self.names[index], self._annotations[index],
                                            self._partial[index], soft, absent)
        if is_key:
            return self.codec.keyframe_result(index, self.names[index], self._annotations[index], soft).without(absent)
        return self.codec.decode(index, self.names[index], soft).without(absent)

    # ------------------------------------------------------------------------------------------ helpers

    def tracks(self) -> list[Track]:
        """What the latest results report confidences for: the objects of their keyframes, or the point names."""
        return self.codec.tracks(self._propagated) if self.codec is not None and self._propagated else []

    def least_confident(self, count: int = 3) -> list[FrameResult]:
        """The ``count`` propagated frames (not keyframes) of the last pass with the lowest confidence of a present
        object (absent objects are not ranked)."""
        ranked = sorted((r for r in self.results.values() if not r.keyframe),
                        key=lambda r: (r.least_confidence(), r.index))
        return ranked[:count]

    def close(self) -> None:
        """Remove the scratch folders of spilled features, frames and kept candidates (if any)."""
        self._features.close()
        if self._frames is not None:
            self._frames.close()
        if self._candidates is not None:
            self._candidates.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_index(self, index: int) -> None:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_frames:
            raise PropagateError(f"frame {index!r} is not a frame of {self.source.path} (0..{self.num_frames - 1})")


class _Counting(FeatureExtractor):
    """Wraps an extractor and counts the frames it extracts (the session's ``stats``)."""

    def __init__(self, inner: FeatureExtractor):
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.stride = inner.stride
        self.device = inner.device
        self.frames = 0

    @property
    def size_multiple(self) -> int:
        return self.inner.size_multiple

    def extract(self, images: torch.Tensor, frame_ids: Sequence[int]) -> torch.Tensor:
        self.frames += len(frame_ids)
        return self.inner.extract(images, frame_ids)

    def settings(self) -> dict[str, object]:
        return self.inner.settings()

    def describe(self) -> str:
        return self.inner.describe()
