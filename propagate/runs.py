"""The ``propagate run`` jobs: :func:`run_video` and :func:`run_points` (and :func:`export_session` for the app),
their writers, and units of work (:class:`Unit`, run serially by :func:`run_units` or by a cluster runner).

Every job writes its results folder whole through :class:`propagate.results.ResultsFolder`, the one owner of
results folders (checks, staging, the install journal, crash recovery).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.fallback import overlay_label
from propagate.features.stream import FeatureStore, check_processing_size
from propagate.io import atomic_write_json
from propagate.keypoints import PointSet
from propagate.kinds import FrameResult, Given, Keyframes, LabelKind, MaskKind, PointKind, kind_named
from propagate.pipeline import check_length, iter_results, resolve_direction
from propagate.records import JSON, RUN_INFO, run_record
from propagate.results import ResultsFolder
from propagate.session import Session
from propagate.video import Frame, FrameSelection, VideoSource, open_video, processing_size, select_frames
from propagate.writers import OVERLAY_MP4, Run, check_formats, chosen

# ---------------------------------------------------------------------------------------------- the run jobs


@contextlib.contextmanager
def _closing(stream: Iterable[object]) -> Iterator[None]:
    """Close a generator of results when the writing stops, even on an error, so that its progress bar is cleared
    before the error line is printed."""
    try:
        yield
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def write_results(run: Run, results: Iterable[tuple[Frame, FrameResult]], formats: Sequence[str] = ("png",),
                  render: bool = True) -> tuple[int, FrameResult | None, list[tuple[str, float]]]:
    """Write every frame's result into ``run.out`` (a staging folder) with the writers of ``run.kind`` that are
    always written or asked for in ``formats`` (:func:`propagate.writers.chosen`; the overlay only if ``render``).

    Returns the number of frames written, the last frame's result, and the three least confident propagated frames
    (not keyframes): ``[(frame name, confidence)]``, lowest first, the confidences as ``confidence.csv`` rounds them.
    """
    count, last, scored = 0, None, []
    with contextlib.ExitStack() as stack:
        write = [stack.enter_context(w.open(run)) for w in chosen(run.kind.name, formats, render)]
        with _closing(results):
            for frame, result in results:
                for each in write:
                    each(frame, result)
                count, last = count + 1, result
                if not result.keyframe:  # absent objects are not ranked
                    value = min((float(f"{result.confidence.get(t, 0.0):.4f}") for t in run.tracks
                                 if t not in result.absent), default=1.0)
                    scored.append((value, frame.index, frame.name))
    return count, last, [(name, value) for value, _, name in sorted(scored)[:3]]


def run_labels(
    video: str | Path,
    kind: type[LabelKind],
    annotation: Given,
    out_dir: str | Path,
    config: Config,
    *,
    extractor: FeatureExtractor | None = None,
    cache: FeatureStore | None = None,
    overwrite: bool = False,
    render: bool = True,
    progress: bool = True,
    label: str | None = None,
    inputs: Sequence[str | Path] = (),
    formats: Sequence[str] = ("png",),
    direction: str | None = None,
    extra: Mapping[str, object] | None = None,
    frames: str | None = None,
    stride: int = 1,
) -> JSON:
    """The ``propagate run`` job for label kind ``kind`` (:mod:`propagate.kinds`): its files (the writers of
    :mod:`propagate.writers` that serve it: always written, asked for in ``formats``, the overlay if ``render``),
    ``run_info.json`` and the ``.complete`` manifest, written whole into ``out_dir`` (see :class:`ResultsFolder`).

    ``annotation`` is read by ``kind.read`` (a file or folder, or arrays: :meth:`LabelKind.read`). One keyframe on
    frame 0 streams frame by frame (:func:`propagate.pipeline.iter_results`); other keyframes go through a
    :class:`propagate.session.Session` (``direction`` default ``config.keyframes.direction``). ``inputs`` are more
    paths the output must stay clear of (a dataset root, a cache); ``label`` captions the overlay (default:
    :func:`propagate.features.fallback.overlay_label`); ``extra`` adds keys to the kind's record (``points.json``).
    Everything is checked before anything is written.

    Returns a summary: frames written, the kind's facts (:meth:`LabelKind.summary`), output folder, overlay path,
    extractor description, keyframes, and the least confident frames (``check_first``: ``[(frame name, confidence)]``).

    ``frames`` (``"A:B"``) and ``stride`` choose the frames read (:func:`propagate.video.select_frames`): results are
    named after their frames in the video, keyframes named after frames (a folder, CVAT, a points file's
    ``keyframes``) must be chosen ones, and a single mask or points file is the first chosen frame's.
    """
    whole = open_video(video)
    source = select_frames(whole, frames, stride)
    given = kind.read(annotation, source, config) if source is whole else _read_chosen(kind, annotation, source,
                                                                                        config, frames, stride)
    codec, keyframes = given.kind, given.frames
    check_length(source)
    direction = direction or config.keyframes.direction
    _, backward = resolve_direction(direction, list(keyframes), len(source))
    formats = check_formats(formats)
    paths = [video, *([given.path] if given.path is not None else []), *inputs]
    folder = ResultsFolder(out_dir, inputs=paths, overwrite=overwrite)
    extractor = extractor or build_extractor(config.features, config.extractor)
    check_processing_size(source, extractor, config.resize)
    text = label or overlay_label(extractor)
    spec = given.file
    per_object = spec is not None and bool(spec.partial or spec.absent)
    if list(keyframes) == [0] and not backward and not per_object:
        results: Iterable[tuple[Frame, FrameResult]] = iter_results(source, codec, keyframes[0], config,
                                                                   extractor=extractor, cache=cache, progress=progress)
    else:
        session = Session(source, config, extractor=extractor, cache=cache, progress=progress)
        for index, keyframe in keyframes.items():
            if spec is not None and index in spec.partial:
                session.add_mask(index, keyframe, sorted(spec.partial[index]))
            else:
                session.add(index, keyframe, codec)
        for index, objects in (spec.absent.items() if spec is not None else ()):
            for obj in sorted(objects):
                session.set_absent(index, obj)
        results = ((frame, r) for frame, (_, r) in zip(source, session.propagate(direction)))
    more: dict[str, object] = {}
    if per_object:
        assert spec is not None
        more = {"partial": {source.names[t]: sorted(o) for t, o in spec.partial.items()},
                "absent": {source.names[t]: sorted(o) for t, o in spec.absent.items()}}
    run = Run(Path(), source, codec, codec.tracks(keyframes), text,
              {"keyframes": [source.names[i] for i in keyframes], **(extra or {})},
              spec.objects if spec is not None else {})
    span = [source.start, source.stop] if isinstance(source, FrameSelection) else [0, len(source)]  # --frames A:B
    count, last, check_first = _write_folder(folder, run, results, formats, render, config, extractor,
                                             **{codec.noun: str(given.path) if given.path is not None else None},
                                             keyframes=[source.source_index(i) for i in keyframes],
                                             direction=direction, frame_range=span, stride=stride, **more)
    assert last is not None
    out = Path(out_dir)
    return {"frames": count, **codec.summary(last), "out": str(out),
            "overlay": str(out / OVERLAY_MP4) if render else None, "features": text, "keyframes": list(keyframes),
            "check_first": check_first}


def _names_frames(annotation: Given) -> bool:
    """Whether ``annotation`` places keyframes on frames by name or number (a folder of PNGs, a CVAT file, a points
    JSON with ``keyframes``, ``{frame: mask}``), rather than being one first frame's (a mask or points file)."""
    if isinstance(annotation, Mapping):
        return True
    if not isinstance(annotation, (str, Path)):
        return False
    path = Path(annotation)
    if path.is_dir():
        return True
    if path.suffix.lower() in (".xml", ".zip"):  # CVAT (propagate.cvat.is_cvat_file)
        return True
    if path.suffix.lower() == ".json" and path.is_file():
        import json

        try:
            return "keyframes" in json.loads(path.read_text())
        except (ValueError, OSError, UnicodeDecodeError):
            return False  # the points reader gives the error
    return False


def _read_chosen(kind: type[LabelKind], annotation: Given, chosen: VideoSource, config: Config, frames: str | None,
                 stride: int) -> Keyframes:
    """``annotation`` read for the frames ``chosen`` (a :class:`propagate.video.FrameSelection`): keyframes named
    after frames of the video must be chosen frames (renumbered in ``chosen``); one first frame's annotation is the
    first chosen frame's."""
    if not _names_frames(annotation):
        return kind.read(annotation, chosen, config)
    given = kind.read(annotation, chosen.whole, config)
    position = {chosen.source_index(i): i for i in range(len(chosen))}
    skipped = [chosen.whole.names[p] for p in given.frames if p not in position]
    if skipped:
        shown = ", ".join(chosen.names[:3]) + (f", ... {chosen.names[-1]}" if len(chosen) > 3 else "")
        raise PropagateError(f"keyframe {skipped[0]} is not one of the frames read (--frames {frames or ':'} "
                             f"--stride {stride} reads {shown}): choose a range and stride that include every "
                             "keyframe")
    spec = given.file
    if spec is not None:  # partial keyframes are keyframes (checked above); an absence mark holds from the first
        absent: dict[int, frozenset[int]] = {}  # chosen frame at or after it on
        for p, objects in sorted(spec.absent.items()):
            later = [i for q, i in position.items() if q >= p]
            if later:
                absent[min(later)] = absent.get(min(later), frozenset()) | objects
        spec = replace(spec, partial={position[p]: o for p, o in spec.partial.items()}, absent=absent)
    return replace(given, frames={position[p]: a for p, a in given.frames.items()}, file=spec)


def _write_folder(folder: ResultsFolder, run: Run, results: Iterable[tuple[Frame, FrameResult]],
                  formats: Sequence[str], render: bool, config: Config, extractor: FeatureExtractor,
                  **record: object) -> tuple[int, FrameResult | None, list[tuple[str, float]]]:
    """Write a results set (:func:`write_results`) and its ``run_info.json`` into ``folder``, whole."""
    with folder as out:
        written = write_results(replace(run, out=out), results, formats, render)
        atomic_write_json(out / RUN_INFO, run_record(config, extractor, video=str(run.source.path),
                                                     processing_size=list(processing_size(run.source.native_size,
                                                                                          config.resize)),
                                                     formats=list(formats), **record))
        folder.summary = {"frames": written[0], **run.kind.counts()}
    return written


def run_video(video: str | Path, mask: str | Path | np.ndarray | Mapping[int, np.ndarray], out_dir: str | Path,
              config: Config, *, extractor: FeatureExtractor | None = None, cache: FeatureStore | None = None,
              overwrite: bool = False, render: bool = True, progress: bool = True, label: str | None = None,
              inputs: Sequence[str | Path] = (), formats: Sequence[str] = ("png",),
              direction: str | None = None, frames: str | None = None, stride: int = 1) -> JSON:
    """The ``propagate run --mask`` job (:func:`run_labels` for masks): one indexed PNG per frame (named like the
    input frames), ``overlay.mp4``, ``confidence.csv``, ``coco.json`` (``formats`` with ``coco``), ``run_info.json``
    and the ``.complete`` manifest, written whole into ``out_dir``.

    ``mask`` is a mask file (frame 0), a folder of keyframe masks named like frames
    (:func:`propagate.labels.read_keyframes`), the first frame's ``[H, W]`` uint8 indices, or ``{frame: mask}``.

    Returns a summary: frames written, output folder, overlay path, extractor description, keyframes, and the least
    confident frames (``check_first``: ``[(frame name, confidence)]``).
    """
    return run_labels(video, MaskKind, mask, out_dir, config, extractor=extractor, cache=cache, overwrite=overwrite,
                      render=render, progress=progress, label=label, inputs=inputs, formats=formats,
                      direction=direction, frames=frames, stride=stride)


def export_session(session: Session, out_dir: str | Path, *, formats: Sequence[str] = ("png",), render: bool = True,
                   overwrite: bool = False, inputs: Sequence[str | Path] = (), label: str | None = None) -> JSON:
    """Write a session's latest results as ``propagate run`` does, into ``out_dir`` (whole or not at all); ``label``
    captions the overlay (default: :func:`propagate.features.fallback.overlay_label`, as ``run`` and ``demo``)."""
    codec = session.codec
    if codec is None or len(session.results) != session.num_frames:
        raise PropagateError("nothing to export: add a keyframe and propagate first")
    formats = check_formats(formats)
    folder = ResultsFolder(out_dir, inputs=[session.source.path, *inputs], overwrite=overwrite)
    run = Run(Path(), session.source, codec, session.tracks(), label or overlay_label(session.extractor),
              {"keyframes": [session.names[i] for i in session.keyframes]}, session.objects)
    results = ((frame, session.results[frame.index]) for frame in session.source)
    count, _, check_first = _write_folder(folder, run, results, formats, render, session.config, session.extractor,
                                          keyframes=session.keyframes)
    return {"frames": count, "out": str(out_dir), "check_first": check_first}


def run_points(video: str | Path, points: str | Path | PointSet, out_dir: str | Path, config: Config, *,
               extractor: FeatureExtractor | None = None, cache: FeatureStore | None = None, overwrite: bool = False,
               render: bool = True, progress: bool = True, inputs: Sequence[str | Path] = (),
               extra: Mapping[str, object] | None = None, direction: str | None = None,
               formats: Sequence[str] = ("png",), frames: str | None = None, stride: int = 1) -> JSON:
    """The ``propagate run --points`` job (:func:`run_labels` for points): ``points.json`` (format:
    :mod:`propagate.keypoints`), ``overlay.mp4``, ``coco_keypoints.json`` (``formats`` with ``coco``),
    ``run_info.json`` and the ``.complete`` manifest, written whole into ``out_dir``.

    ``points`` is a points file (frame 0's points, or points on several keyframes:
    :func:`propagate.keypoints.read_point_keyframes`) or a :class:`PointSet` of the first frame; ``extra`` adds keys
    to ``points.json``.

    Returns a summary: ``{"frames", "points", "lost_last_frame", "out", "overlay", "features", "keyframes",
    "check_first"}``.
    """
    return run_labels(video, PointKind, points, out_dir, config, extractor=extractor, cache=cache,
                      overwrite=overwrite, render=render, progress=progress, inputs=inputs, formats=formats,
                      direction=direction, extra=extra, frames=frames, stride=stride)


# ---------------------------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class Unit:
    """One video's run, as :func:`run_unit` does it: a ``run`` of label kind ``kind`` (``masks`` or ``points``: a
    key of :data:`propagate.kinds.KINDS`) into ``out``.

    Picklable, so that a scheduler (:mod:`propagate.cluster`) can hand units to workers. ``config``, when set, is
    the unit's own config (a sequence with per-sequence overrides, :func:`propagate.config.sequence_config`): every
    runner runs the unit with it instead of the run's config.
    """

    name: str
    video: Path
    annotation: Path | np.ndarray | Mapping[int, np.ndarray] | PointSet  # mask file/folder, masks; points
    out: Path
    kind: str = "masks"
    render: bool = True
    inputs: tuple[Path, ...] = ()
    extra: Mapping[str, object] | None = None
    config: Config | None = None


def run_unit(unit: Unit, config: Config, extractor: FeatureExtractor | None = None,
             cache: FeatureStore | None = None, progress: bool = True, overwrite: bool = False) -> JSON:
    """Run one :class:`Unit` with :func:`run_labels` (with ``unit.config`` if it has one, else ``config``); returns
    its summary."""
    return run_labels(unit.video, kind_named(unit.kind), unit.annotation, unit.out,
                      unit.config if unit.config is not None else config, extractor=extractor, cache=cache,
                      overwrite=overwrite, render=unit.render, progress=progress, inputs=unit.inputs, extra=unit.extra)


Runner = Callable[[Sequence[Unit], Config, FeatureExtractor | None, FeatureStore | None, bool], list[JSON]]


def run_units(units: Sequence[Unit], config: Config, extractor: FeatureExtractor | None = None,
              cache: FeatureStore | None = None, progress: bool = True, desc: str = "videos") -> list[JSON]:
    """Run units one after the other in this process, the extractor built once (the serial scheduler)."""
    if units and extractor is None:
        extractor = build_extractor(config.features, config.extractor)
    summaries = []
    with tqdm(units, desc=desc, unit="video", disable=not progress, file=sys.stderr) as bar:
        for unit in bar:
            bar.set_postfix_str(unit.name)
            summaries.append(run_unit(unit, config, extractor, cache, progress=progress))
    return summaries
