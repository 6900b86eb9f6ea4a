"""A labelling session over one video (SAM 2's shape): features computed once, keyframes added and removed on any
frame, results streamed; a correction costs propagation only.

>>> s = Session("clip.mp4", load_config("davis_baseline"))
>>> s.add_mask(0, first_mask)                       # [H, W] uint8: 0 background, 1..N objects
>>> for index, result in s.propagate():             # every frame, in order
...     write_mask(f"out/{result.name}.png", result.mask)
>>> s.add_mask(40, corrected)                       # a correction (or an object entering) at frame 40
>>> for index, result in s.propagate(): ...         # no extraction; frames that cannot change are not recomputed

Keyframes (DESIGN section 9): each keyframe's annotation is its own result and joins the permanent context when a
sweep reaches it; frames before the first keyframe are propagated backward from it, frames after the last forward,
and a frame between two keyframes gets both directions' soft labels blended by temporal distance
(:func:`propagate.pipeline.blend_weights`), then decoded. One keyframe on frame 0 gives exactly the single-mask
results of :func:`propagate.pipeline.run_masks`.

Features are kept in memory up to ``memory_bytes`` (float32, exact); beyond that they go to a scratch folder the
session creates and removes (:meth:`Session.close`), so results never depend on where features were kept. The frames
the first pass decodes are kept the same way (``frame_bytes``), so :meth:`Session.image` of any frame is then a read,
not a decode from the video's keyframe before it (which costs up to a group of pictures: 250 frames in an H.264 file).
"""
from __future__ import annotations

import shutil
import tempfile
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
from propagate.kinds import FrameResult, LabelKind, MaskKind, PointKind, Track
from propagate.pipeline import Sweep, as_source, check_length, propagate_keyframes
from propagate.progress import Bars, Progress
from propagate.video import VideoSource, processing_size

MEMORY_BYTES = 4 * 2**30  # features kept in memory before the session spills them to its scratch folder
FRAME_BYTES = 1 * 2**30  # decoded frames kept in memory before the session spills them to its scratch folder


class _FeatureMemory:
    """Features ``[C, h, w]`` (or frames ``[H, W, 3]`` uint8) of every frame, in memory up to a budget, then as files
    in a scratch folder (named ``prefix``...)."""

    def __init__(self, budget: int, prefix: str = "propagate-session-"):
        self.budget = budget
        self.prefix = prefix
        self.used = 0
        self.ram: dict[int, torch.Tensor] = {}
        self.scratch: Path | None = None

    def __contains__(self, index: int) -> bool:
        return index in self.ram or (self.scratch is not None and (self.scratch / f"{index}.pt").is_file())

    def put(self, index: int, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        if self.used + size <= self.budget:
            self.ram[index] = feats
            self.used += size
            return
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix=self.prefix))
        torch.save(feats.cpu(), self.scratch / f"{index}.pt")

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
        frame_bytes: decoded frames kept in memory (for :meth:`image`) before spilling to a scratch folder.
    """

    def __init__(self, video: str | Path | VideoSource, config: Config, *, extractor: FeatureExtractor | None = None,
                 cache: FeatureStore | None = None, memory_bytes: int = MEMORY_BYTES, frame_bytes: int = FRAME_BYTES,
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
        self._features = _FeatureMemory(memory_bytes)
        self._frames = _FeatureMemory(frame_bytes, "propagate-frames-")  # [H, W, 3] uint8 as read, for image()
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
                if frame.index not in self._frames:
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
        seeking (not from frame 0 on) and kept from then on."""
        self._check_index(index)
        if index not in self._frames:
            self._frames.put(index, torch.from_numpy(self.source.frame(index)))
        return self._frames.get(index).numpy().copy()  # a copy: the kept frame stays as read

    def annotation(self, index: int) -> np.ndarray:
        """Keyframe ``index``'s annotation as given: a mask ``[H, W]`` uint8 or points ``[J, 2]`` (read-only)."""
        if index not in self._annotations:
            raise PropagateError(f"frame {index} is not a keyframe (keyframes: {self.keyframes})")
        view = self._annotations[index].view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------------------------------ keyframes

    def add_mask(self, index: int, mask: np.ndarray) -> None:
        """Make frame ``index`` a keyframe with ``mask [H, W]`` uint8 (0 background, 1..N objects, 255 void)."""
        self.add(index, mask, MaskKind.of(self.config, self.native_size))

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
        self.codec = codec

    def remove(self, index: int) -> None:
        """Frame ``index`` is a keyframe no more."""
        if index not in self._annotations:
            raise PropagateError(f"frame {index} is not a keyframe (keyframes: {self.keyframes})")
        del self._annotations[index]
        if not self._annotations:
            self.codec = None

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
        report, bars = self._reporter(callback)
        stream = propagate_keyframes(self.features, self.num_frames, labels, self.config.propagation, direction,
                                     self.config.keyframes.blend, self._sweeps, progress=report)
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

    def _decode(self, index: int, soft: torch.Tensor, is_key: bool) -> FrameResult:
        assert self.codec is not None
        if is_key:
            return self.codec.keyframe_result(index, self.names[index], self._annotations[index], soft)
        return self.codec.decode(index, self.names[index], soft)

    # ------------------------------------------------------------------------------------------ helpers

    def tracks(self) -> list[Track]:
        """What the latest results report confidences for: the objects of their keyframes, or the point names."""
        return self.codec.tracks(self._propagated) if self.codec is not None and self._propagated else []

    def least_confident(self, count: int = 3) -> list[FrameResult]:
        """The ``count`` propagated frames (not keyframes) of the last pass with the lowest confidence."""
        ranked = sorted((r for r in self.results.values() if not r.keyframe),
                        key=lambda r: (r.least_confidence(), r.index))
        return ranked[:count]

    def close(self) -> None:
        """Remove the scratch folders of spilled features, frames and kept candidates (if any)."""
        self._features.close()
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
