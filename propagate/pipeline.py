"""The streaming generators: frames -> features -> propagation -> decoded labels, one frame at a time.

:func:`iter_results` carries a first-frame annotation of any label kind (its codec: :mod:`propagate.kinds`) through
a video; :func:`run_masks` and :func:`track_points` are its masks and points forms. Each frame flows through the
whole chain before the next one is read (features are extracted in small batches), so memory is bounded by the
context queue, not by the video's length. Nothing here writes files: the jobs that write results folders are in
:mod:`propagate.runs`.

>>> for frame, mask in run_masks("frames/", read_mask("00000.png"), load_config("davis_sd")):
...     write_mask(f"out/{frame.name}.png", mask)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from propagate.candidates import CachedPropagator, CandidateStore
from propagate.config import Config, KeypointConfig, PropagationConfig
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore, iter_features
from propagate.kinds import NO_RULES, FrameResult, KeyframeRules, LabelKind, MaskKind, PointKind
from propagate.labels import require_objects
from propagate.progress import Progress
from propagate.propagation import LabelPropagator
from propagate.video import Frame, VideoSource, open_video


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


def iter_results(
    video: str | Path | VideoSource,
    kind: LabelKind,
    first: np.ndarray,
    config: Config,
    *,
    extractor: FeatureExtractor | None = None,
    cache: FeatureStore | None = None,
    progress: bool = True,
    propagator: LabelPropagator | None = None,
) -> Iterator[tuple[Frame, FrameResult]]:
    """Carry frame 0's annotation ``first`` (a mask ``[H, W]`` or points ``[J, 2]``, as ``kind`` encodes it) through
    ``video``; yield ``(frame, FrameResult)`` for every frame, frame 0's from :meth:`LabelKind.first_result`.

    Each frame flows through features, propagation and ``kind``'s decoding before the next one is read; the
    generator holds only the context queue between frames. ``cache`` (a :class:`propagate.cache.FeatureCache`)
    supplies stored features instead of extracting them; ``propagator`` (default: one made from
    ``config.propagation``) carries the labels.
    """
    source = as_source(video)
    check_length(source)
    extractor = extractor or build_extractor(config.features, config.extractor)
    propagator = propagator or LabelPropagator(config.propagation)
    with _progress(source, "propagate", progress) as bar:
        for frame, feats in iter_features(source, extractor, config.resize, config.batch_frames, cache):
            if frame.index == 0:
                labels = kind.encode({0: first}, tuple(feats.shape[1:]))[0]
                propagator.start(feats, labels)
                result = kind.first_result(frame.index, frame.name, first, labels)
            else:
                result = kind.decode(frame.index, frame.name, propagator.step(feats))
            bar.update(1)
            yield frame, result


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
    :class:`propagate.cache.FeatureCache`) supplies stored features instead of extracting them. For keyframes on
    other frames, use :class:`propagate.session.Session`.
    """
    for frame, mask, _confidence in iter_masks(video, first_mask, config, extractor=extractor, cache=cache,
                                               progress=progress):
        yield frame, mask


def iter_masks(video: str | Path | VideoSource, first_mask: np.ndarray, config: Config, *,
               extractor: FeatureExtractor | None = None, cache: FeatureStore | None = None,
               progress: bool = True) -> Iterator[tuple[Frame, np.ndarray, dict[int, float]]]:
    """:func:`run_masks` with each frame's confidence per object (:func:`propagate.labels.decode_mask`; 1 on
    frame 0): ``(frame, mask [H, W] uint8, {object: confidence})``."""
    source = as_source(video)
    check_length(source)
    native_w, native_h = source.native_size
    if first_mask.shape != (native_h, native_w):
        raise PropagateError(
            f"first mask is {first_mask.shape[1]}x{first_mask.shape[0]} but the frames of {source.path} are "
            f"{native_w}x{native_h}: give the mask of the first frame"
        )
    require_objects(first_mask, "first mask")
    kind = MaskKind.of(config, source.native_size)
    for frame, result in iter_results(source, kind, first_mask, config, extractor=extractor, cache=cache,
                                      progress=progress):
        assert result.mask is not None
        yield frame, result.mask, {int(o): c for o, c in result.confidence.items()}


class KeypointTracker:
    """Carries points through a video one frame at a time: a :class:`LabelPropagator` fed through the points codec
    (:class:`propagate.kinds.PointKind`: heatmap encode/decode).

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
        keypoints.check()  # checked when made; again here, as a caller may have changed a field since
        self.kind = PointKind(keypoints, native_wh)
        self.keypoints = keypoints
        self.native_wh = tuple(native_wh)
        self.propagator = LabelPropagator(propagation, device=device)
        self.labels: torch.Tensor | None = None  # [1 + J, h, w] soft labels of the latest frame

    @property
    def tracked(self) -> np.ndarray | None:
        """``[J]`` bool: the point has a label on the grid (see :meth:`start`)."""
        return self.kind.tracked

    def start(self, feats: torch.Tensor, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame 0: features ``[C, h, w]`` and points ``[J, 2]`` in native pixels (NaN rows: no label).

        Returns frame 0's points and confidences: ``xy`` itself with confidence 1, except points whose heatmap is
        empty (off the grid, or NaN), which cannot be propagated: NaN with confidence 0 (see :attr:`tracked`).
        """
        self.labels = self.kind.heatmaps(xy, tuple(feats.shape[-2:]))
        self.propagator.start(feats, self.labels)
        first = self.kind.first_result(0, "", xy, self.labels)
        assert first.xy is not None
        return first.xy, self.kind.confidences(first)

    def step(self, feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Points ``[J, 2]`` (NaN if lost) and confidences ``[J]`` of the next frame from its features ``[C, h, w]``."""
        self.labels = self.propagator.step(feats)
        return self.kind.locate(self.labels)


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
    for frame, result in iter_results(source, tracker.kind, xy, config, extractor=extractor, cache=cache,
                                      progress=progress, propagator=tracker.propagator):
        assert result.xy is not None
        yield frame, result.xy, tracker.kind.confidences(result)


# ---------------------------------------------------------------------------------------------- keyframes

DIRECTIONS = ("auto", "forward", "backward", "both")


def resolve_direction(direction: str, keyframes: Sequence[int], num_frames: int) -> tuple[bool, bool]:
    """Which sweeps run: ``(forward, backward)``.

    ``auto`` is ``forward`` for one keyframe on frame 0 (exactly the single-mask protocol) and ``both`` otherwise.
    ``forward`` needs a keyframe on the first frame and ``backward`` one on the last, so that every frame gets a
    result.
    """
    if direction not in DIRECTIONS:
        raise PropagateError(f"direction {direction!r}: choose one of {', '.join(DIRECTIONS)}")
    keys = sorted(keyframes)
    if not keys:
        raise PropagateError("no keyframe: give an annotation for at least one frame")
    if direction == "auto":
        direction = "forward" if keys == [0] else "both"
    if direction == "forward" and keys[0] != 0:
        raise PropagateError(f"direction forward needs a keyframe on the first frame, but the first is frame "
                             f"{keys[0]}: use --direction both (or backward)")
    if direction == "backward" and keys[-1] != num_frames - 1:
        raise PropagateError(f"direction backward needs a keyframe on the last frame ({num_frames - 1}), but the last "
                             f"is frame {keys[-1]}: use --direction both (or forward)")
    return direction in ("forward", "both"), direction in ("backward", "both")


def blend_weights(t: int, before: int, after: int, rule: str = "linear") -> tuple[float, float]:
    """Weights ``(forward, backward)`` of frame ``t`` between keyframes ``before < t < after``.

    ``linear``: by temporal distance, each direction weighted by how close its source keyframe is:
    ``forward = (after - t) / (after - before)``, ``backward = (t - before) / (after - before)``.
    ``nearest``: all weight to the direction whose keyframe is nearer (forward on a tie).
    """
    if not before < t < after:
        raise ValueError(f"frame {t} is not between keyframes {before} and {after}")
    if rule == "linear":
        span = after - before
        return (after - t) / span, (t - before) / span
    if rule == "nearest":
        return (1.0, 0.0) if t - before <= after - t else (0.0, 1.0)
    raise PropagateError(f"keyframes.blend {rule!r}: choose linear or nearest")


LOOKAHEAD = 8  # frames ahead whose missing candidate pairs a sweep with a store scores together


class Sweep:
    """One direction's pass over a video from its first keyframe, remembering every frame's soft labels so that a
    later pass with other keyframes recomputes only the frames whose result can change.

    A pass visits frames in ``order``; keyframes (``{frame: labels [K, h, w]}``) join the permanent context when
    reached, other frames are propagated. Before the first frame that differs from the last pass (a keyframe
    added, removed or changed), nothing can have changed: those frames are replayed into the context (their stored
    labels pushed as they were) without propagation, which gives the same context, slot for slot.

    ``propagation.scope: segment``: at each keyframe the context starts afresh with that keyframe and the next one
    along ``order`` (a frame between two keyframes draws only on those two and the frames between them), so a
    segment whose two keyframes are unchanged is replayed whatever changed elsewhere. With a ``store``
    (:class:`propagate.candidates.CandidateStore`, shared by both directions), each frame's top-k candidates are
    kept, and frames that must be recomputed cost a gather where their context frames are unchanged.
    """

    def __init__(self, cfg: PropagationConfig, device: str | torch.device | None = None,
                 store: CandidateStore | None = None):
        self.cfg = cfg
        self.device = device
        self.store = store
        self.soft: dict[int, torch.Tensor] = {}  # frame -> [K, h, w] soft labels of the last pass (CPU)
        self._keys: dict[int, torch.Tensor] = {}  # the keyframes of the last pass
        self._rules: KeyframeRules = NO_RULES  # its per-object rules
        self.used: dict[int, torch.Tensor] = {}  # the labels each keyframe of the last pass joined the context with
        self.predicted: dict[int, torch.Tensor] = {}  # the last pass's propagated labels on its partial keyframes
        self._order: list[int] = []
        self.propagated = 0  # frames propagated by the last pass (not replayed)
        self.affinities = 0  # (frame, context frame) affinities the last pass computed (not taken from the store)

    def _propagator(self) -> LabelPropagator:
        if self.store is not None:
            return CachedPropagator(self.cfg, self.store, device=self.device)
        return LabelPropagator(self.cfg, device=self.device)

    def run(self, order: Sequence[int], features: Callable[[int], torch.Tensor],
            keyframes: Mapping[int, torch.Tensor], rules: KeyframeRules | None = None,
            start: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(frame, soft labels [K, h, w])`` along ``order`` (which starts on a keyframe).

        ``rules`` (:class:`propagate.kinds.KeyframeRules`): a partial keyframe joins the context with its objects
        merged into this sweep's propagated labels there (:meth:`~propagate.kinds.KeyframeRules.merge`; what it
        yields is those merged labels, its propagated labels are kept in :attr:`predicted`), and every frame's
        labels have its absent objects cleared before they are yielded or join the context. A partial keyframe
        that starts the sweep joins with ``start`` (another sweep's merged labels there) or, if None, its
        objects alone. Without rules (or with none that apply) the pass is exactly the plain one.
        """
        order = list(order)
        if not order or order[0] not in keyframes:
            raise ValueError("a sweep starts on a keyframe")
        rules = rules or NO_RULES
        same_order, earlier = order == self._order, self._keys
        earlier_rules, earlier_used, earlier_predicted = self._rules, self.used, self.predicted
        same = same_order
        segment = self.cfg.scope == "segment"
        following, followed = _next_keyframes(order, keyframes), _next_keyframes(order, earlier)
        # a pass stopped midway leaves a mix: the next one recomputes everything
        used: dict[int, torch.Tensor] = {}  # the labels each keyframe joined the context with
        predicted: dict[int, torch.Tensor] = {}
        self._order, self._keys, self._rules, self.used, self.predicted = [], {}, NO_RULES, used, predicted
        propagator = self._propagator()
        frame_of = (lambda t: {"frame": t}) if self.store is not None else (lambda t: {})

        def ahead_of(index: int) -> dict[str, object]:
            """The frames after ``order[index]`` up to the next keyframe (at most LOOKAHEAD), for the store's
            batched scoring (:meth:`propagate.candidates.CachedPropagator.step`)."""
            if self.store is None:
                return {}
            ahead = []
            for u in order[index + 1:index + 1 + LOOKAHEAD]:
                if u in keyframes:
                    break
                ahead.append(u)
            return {"ahead": ahead, "features": features}

        self.propagated = self.affinities = 0

        def ruled(t: int) -> bool:  # the keyframe and the rules on frame t are as in the last pass
            return _same_keyframe(keyframes.get(t), earlier.get(t)) and rules.same_at(t, earlier_rules)

        for index, t in enumerate(order):
            feats = features(t)
            if t in keyframes:
                if t not in rules.partial:
                    labels = keyframes[t]
                elif t == order[0]:
                    labels = start if start is not None else rules.merge(t, None)
                elif same and ruled(t) and t in earlier_used and t in earlier_predicted:  # nothing before it changed
                    labels, predicted[t] = earlier_used[t], earlier_predicted[t]
                else:
                    predicted[t] = rules.clear(t, propagator.step(feats, push=False, **frame_of(t)).cpu())
                    labels = rules.merge(t, predicted[t])
                    self.propagated += 1
                used[t] = labels
                if segment:  # a segment is unchanged if both its keyframes and the rules between them are
                    after = following[t]
                    between = order[order.index(t):order.index(after) if after is not None else len(order)]
                    same = (same_order and ruled(t) and _same_keyframe(labels, earlier_used.get(t))
                            and followed.get(t, -1) == after
                            and (after is None or ruled(after))
                            and all(rules.same_at(u, earlier_rules) for u in between))
                else:
                    same = same and ruled(t) and _same_keyframe(labels, earlier_used.get(t))
                if segment:
                    propagator = self._propagator()
                    propagator.start(feats, labels, **frame_of(t))
                    after = following[t]
                    if after is not None and after not in rules.partial:  # a partial one's labels come when reached
                        propagator.add_keyframe(features(after), keyframes[after], **frame_of(after))
                elif propagator.queue is None:
                    propagator.start(feats, labels, **frame_of(t))
                else:
                    propagator.add_keyframe(feats, labels, **frame_of(t))
                soft = labels
            else:
                if not segment:
                    same = same and ruled(t)
                if same:
                    soft = self.soft[t]
                    propagator.replay(feats, soft, **frame_of(t))
                else:
                    assert propagator.queue is not None
                    scored = self.store.computed if self.store is not None else 0
                    context = propagator.queue.fixed + propagator.queue.count
                    if rules.absent.get(t):
                        soft = rules.clear(t, propagator.step(feats, push=False, **frame_of(t),
                                                              **ahead_of(index)).cpu())
                        propagator.replay(feats, soft, **frame_of(t))
                    else:
                        soft = propagator.step(feats, **frame_of(t), **ahead_of(index)).cpu()
                    self.propagated += 1
                    self.affinities += self.store.computed - scored if self.store is not None else context
            self.soft[t] = soft
            yield t, soft
        self._order, self._keys, self._rules = order, dict(keyframes), rules


def _same_keyframe(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def _next_keyframes(order: Sequence[int], keyframes: Mapping[int, torch.Tensor]) -> dict[int, int | None]:
    """Each keyframe on ``order`` -> the next keyframe along it (None for the last)."""
    keys = [t for t in order if t in keyframes]
    return {t: (keys[i + 1] if i + 1 < len(keys) else None) for i, t in enumerate(keys)}


def propagate_keyframes(
    features: Callable[[int], torch.Tensor],
    num_frames: int,
    keyframes: Mapping[int, torch.Tensor],
    cfg: PropagationConfig,
    direction: str = "auto",
    blend: str = "linear",
    sweeps: tuple[Sweep, Sweep] | None = None,
    rules: KeyframeRules | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[int, torch.Tensor, bool]]:
    """Soft labels of every frame from annotated keyframes, in frame order: ``(frame, labels [K, h, w], keyframe)``.

    Keyframes give their own labels. Frames before the first keyframe come from the backward sweep, frames after the
    last from the forward sweep, and a frame between two keyframes gets both sweeps' labels weighted by
    :func:`blend_weights` (only the sweeps that ``direction`` runs; see :func:`resolve_direction`). ``features(t)``
    gives frame ``t``'s features ``[C, h, w]``; pass ``sweeps`` (forward, backward) kept from an earlier call to
    recompute only what the new keyframes can change.

    ``rules`` (:class:`propagate.kinds.KeyframeRules`; see :meth:`Sweep.run`): a partial keyframe yields its
    propagated labels, blended as any frame's (to be merged with its objects by the caller:
    :meth:`propagate.kinds.MaskKind.merged_result`), or its merged labels where no sweep propagates to it. A sweep
    that starts on a partial keyframe takes the other objects from the other sweep's merged labels there: the
    forward sweep runs first when the last keyframe is partial and the first is not (then every frame is yielded
    once both sweeps are done); where the first and the last keyframes are both partial, the backward sweep starts
    from the last one's objects alone.

    ``progress(phase, done, total)`` (:mod:`propagate.progress`) is called after each frame of a sweep run whole
    before the first frame is yielded (``backward``; ``forward`` when it runs first), and after each frame yielded
    (``forward``, or ``decode`` when no forward sweep runs along with the yielding).
    """
    keys = sorted(keyframes)
    forward, backward = resolve_direction(direction, keys, num_frames)
    fwd_sweep, bwd_sweep = sweeps or (Sweep(cfg), Sweep(cfg))
    report = progress or (lambda phase, done, total: None)

    def whole(phase: str, run: Iterator[tuple[int, torch.Tensor]], total: int) -> list[tuple[int, torch.Tensor]]:
        """A sweep run to its end, reported frame by frame."""
        done = []
        for item in run:
            done.append(item)
            report(phase, len(done), total)
        return done

    rules = rules or NO_RULES
    partial = rules.partial
    forward_first = forward and backward and keys[-1] in partial and keys[0] not in partial
    fwd_run: Iterator[tuple[int, torch.Tensor]] | None = None
    if forward_first:
        fwd_run = iter(whole("forward", fwd_sweep.run(range(keys[0], num_frames), features, keyframes, rules),
                             num_frames - keys[0]))
    back: dict[int, torch.Tensor] = {}
    if backward:
        start = fwd_sweep.used.get(keys[-1]) if forward_first else None
        back = dict(whole("backward", bwd_sweep.run(range(keys[-1], -1, -1), features, keyframes, rules, start),
                          keys[-1] + 1))
    phase = "forward" if forward and not forward_first else "decode"

    def at_partial(t: int, soft: torch.Tensor) -> torch.Tensor:
        """What a partial keyframe yields: the sweeps' propagated labels there, blended (``soft``: none reach it)."""
        fwd = fwd_sweep.predicted.get(t) if forward else None
        bwd = bwd_sweep.predicted.get(t) if backward else None
        if fwd is not None and bwd is not None:
            w_fwd, w_bwd = blend_weights(t, max(k for k in keys if k < t), min(k for k in keys if k > t), blend)
            return w_fwd * fwd + w_bwd * bwd
        return fwd if fwd is not None else bwd if bwd is not None else soft

    if not forward:
        for t in range(num_frames):
            is_key = t in keyframes
            yield t, at_partial(t, back[t]) if is_key and t in partial else back[t], is_key
            report(phase, t + 1, num_frames)
        return
    for t in range(keys[0]):
        yield t, back[t], False
        report(phase, t + 1, num_frames)
    if fwd_run is None:
        start = bwd_sweep.used.get(keys[0]) if backward and keys[0] in partial else None
        fwd_run = fwd_sweep.run(range(keys[0], num_frames), features, keyframes, rules, start)
    for t, soft in fwd_run:
        if t in keyframes:
            yield t, at_partial(t, soft) if t in partial else soft, True
        elif not backward or t > keys[-1]:
            yield t, soft, False
        else:
            before = max(k for k in keys if k < t)
            after = min(k for k in keys if k > t)
            w_fwd, w_bwd = blend_weights(t, before, after, blend)
            yield t, w_fwd * soft + w_bwd * back[t], False
        report(phase, t + 1, num_frames)
