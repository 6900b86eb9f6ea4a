"""The ``propagate run`` jobs: :func:`run_video` and :func:`run_points` (and :func:`export_session` for the app),
their writers, and units of work (:class:`Unit`, run serially by :func:`run_units` or by a cluster runner).

Every job writes its results folder whole through :class:`propagate.results.ResultsFolder`, the one owner of
results folders (checks, staging, the install journal, crash recovery).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore, check_processing_size
from propagate.coco import CocoVideoWriter, keypoints_json
from propagate.io import atomic_write_json, atomic_write_text
from propagate.keypoints import PointSet, check_points_inside, points_record, read_point_keyframes
from propagate.labels import object_ids, read_keyframes, require_objects, write_mask
from propagate.pipeline import KeypointTracker, check_length, iter_masks, resolve_direction, track_points
from propagate.render import OverlayWriter, caption, draw_points, overlay_mask
from propagate.records import JSON, RUN_INFO, run_record
from propagate.results import ResultsFolder
from propagate.session import Session
from propagate.video import Frame, VideoSource, open_video


# ---------------------------------------------------------------------------------------------- the run jobs


FORMATS = ("png", "coco")
CONFIDENCE_CSV = "confidence.csv"
COCO_JSON = "coco.json"
COCO_KEYPOINTS_JSON = "coco_keypoints.json"
MaskResult = tuple[Frame, np.ndarray, Mapping[int, float], bool]  # frame, mask [H, W], confidence, keyframe


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The export formats asked for (``png`` always written; ``coco`` adds ``coco.json``)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise PropagateError(f"format {', '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)} (e.g. --format png,coco)")
    return tuple(dict.fromkeys(formats))


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


def write_mask_results(out: Path, source: VideoSource, results: Iterable[MaskResult], object_ids: Sequence[int],
                       formats: Sequence[str] = ("png",), overlay_text: str | None = None) -> list[list[str]]:
    """Write a masks results set into ``out`` (a staging folder): ``<frame>.png`` per frame, ``confidence.csv``,
    ``coco.json`` (if asked) and ``overlay.mp4`` (if ``overlay_text`` is given, captioned with it).

    Returns the confidence rows (``[frame, name, keyframe, object_1, ...]``) as written.
    """
    objects = sorted(object_ids)
    coco = CocoVideoWriter(Path(source.path).stem if Path(source.path).suffix else Path(source.path).name,
                           source.native_size, objects) if "coco" in formats else None
    rows = [["frame", "name", "keyframe", *[f"object_{o}" for o in objects]]]
    writer = OverlayWriter(out / "overlay.mp4", source.fps, source.native_size) if overlay_text is not None else None
    with writer or contextlib.nullcontext(), _closing(results):
        for frame, mask, confidence, keyframe in results:
            write_mask(out / f"{frame.name}.png", mask)
            rows.append([str(frame.index), frame.name, str(int(keyframe)),
                         *[f"{confidence.get(o, 0.0):.4f}" for o in objects]])
            if coco is not None:
                coco.add(frame.name, mask)
            if writer is not None:
                tag = " | keyframe" if keyframe else ""
                writer.write(caption(overlay_mask(frame.image, mask), f"{overlay_text} | frame {frame.index}{tag}"))
    atomic_write_text(out / CONFIDENCE_CSV, "\n".join(",".join(r) for r in rows) + "\n")
    if coco is not None:
        atomic_write_json(out / COCO_JSON, coco.to_json())
    return rows


def _write_masks_folder(folder: ResultsFolder, source: VideoSource, results: Iterable[MaskResult],
                        objects: Sequence[int], formats: Sequence[str], overlay_text: str | None, config: Config,
                        extractor: FeatureExtractor, **record: object) -> list[list[str]]:
    """Write a masks results set (:func:`write_mask_results`) and its ``run_info.json`` into ``folder``, whole."""
    with folder as out:
        rows = write_mask_results(out, source, results, objects, formats, overlay_text)
        atomic_write_json(out / RUN_INFO, run_record(config, extractor, video=str(source.path),
                                                     formats=list(formats), **record))
        folder.summary = {"frames": len(rows) - 1}
    return rows


def least_confident(rows: Sequence[Sequence[str]], count: int = 3) -> list[tuple[str, float]]:
    """The ``count`` propagated frames (not keyframes) of confidence rows with the lowest object confidence:
    ``[(frame name, confidence)]``, lowest first."""
    scored = [(min((float(v) for v in r[3:]), default=1.0), int(r[0]), r[1]) for r in rows[1:] if r[2] == "0"]
    return [(name, value) for value, _, name in sorted(scored)[:count]]


def run_video(
    video: str | Path,
    mask: str | Path | np.ndarray | Mapping[int, np.ndarray],
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
) -> JSON:
    """The ``propagate run --mask`` job: one indexed PNG per frame (named like the input frames), ``overlay.mp4``,
    ``confidence.csv``, ``coco.json`` (``formats`` with ``coco``), ``run_info.json`` and the ``.complete`` manifest,
    written whole into ``out_dir`` (see :class:`ResultsFolder`).

    ``mask`` is a mask file (frame 0), a folder of keyframe masks named like frames
    (:func:`propagate.labels.read_keyframes`), the first frame's ``[H, W]`` uint8 indices, or ``{frame: mask}``. One
    keyframe on frame 0 streams frame by frame (:func:`propagate.pipeline.iter_masks`); other keyframes go through a
    :class:`propagate.session.Session` (``direction`` default ``config.keyframes.direction``). ``inputs`` are more
    paths the output must stay clear of (a dataset root, a cache). Everything is checked before anything is written.

    Returns a summary: frames written, output folder, overlay path, extractor description, keyframes, and the least
    confident frames (``check_first``: ``[(frame name, confidence)]``).
    """
    source = open_video(video)
    given = not isinstance(mask, (str, Path))
    if isinstance(mask, np.ndarray):
        keyframes = {0: mask}
    elif given:
        keyframes = dict(sorted(mask.items()))
    else:
        keyframes = read_keyframes(mask, source.names, source.native_size)
    if given:  # read_keyframes checks files
        require_objects(np.concatenate([m.ravel() for m in keyframes.values()]), "first mask")
    check_length(source)
    direction = direction or config.keyframes.direction
    _, backward = resolve_direction(direction, list(keyframes), len(source))
    formats = check_formats(formats)
    paths = [video, *([] if given else [mask]), *inputs]
    folder = ResultsFolder(out_dir, inputs=paths, overwrite=overwrite)
    extractor = extractor or build_extractor(config.features, config.extractor)
    check_processing_size(source, extractor, config.resize)
    text = label or extractor.describe()
    objects = sorted({o for m in keyframes.values() for o in object_ids(m)})
    if list(keyframes) == [0] and not backward:
        results: Iterable[MaskResult] = (
            (frame, m, confidence, frame.index == 0)
            for frame, m, confidence in iter_masks(source, keyframes[0], config, extractor=extractor,
                                                          cache=cache, progress=progress))
    else:
        session = Session(source, config, extractor=extractor, cache=cache, progress=progress)
        for index, keyframe in keyframes.items():
            session.add_mask(index, keyframe)
        results = ((frame, r.mask, r.confidence, r.keyframe)
                   for frame, (_, r) in zip(source, session.propagate(direction)))
    rows = _write_masks_folder(folder, source, results, objects, formats, text if render else None, config, extractor,
                               mask=None if given else str(mask), keyframes=list(keyframes), direction=direction)
    out = Path(out_dir)
    return {"frames": len(rows) - 1, "out": str(out), "overlay": str(out / "overlay.mp4") if render else None,
            "features": text, "keyframes": list(keyframes), "check_first": least_confident(rows)}


def export_session(session: Session, out_dir: str | Path, *, formats: Sequence[str] = ("png",), render: bool = True,
                   overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> JSON:
    """Write a session's latest results (masks) as ``propagate run`` does, into ``out_dir`` (whole or not at all)."""
    if session.kind != "masks" or len(session.results) != session.num_frames:
        raise PropagateError("nothing to export: add a mask keyframe and propagate first")
    formats = check_formats(formats)
    folder = ResultsFolder(out_dir, inputs=[session.source.path, *inputs], overwrite=overwrite)
    objects = sorted({o for r in session.results.values() if r.keyframe and r.mask is not None
                      for o in object_ids(r.mask)})
    results = ((frame, session.results[frame.index].mask, session.results[frame.index].confidence,
                session.results[frame.index].keyframe) for frame in session.source)
    rows = _write_masks_folder(folder, session.source, results, objects, formats,
                               session.extractor.describe() if render else None, session.config, session.extractor,
                               keyframes=session.keyframes)
    return {"frames": len(rows) - 1, "out": str(out_dir), "check_first": least_confident(rows)}


def run_points(video: str | Path, points: str | Path | PointSet, out_dir: str | Path, config: Config, *,
               extractor: FeatureExtractor | None = None, cache: FeatureStore | None = None, overwrite: bool = False,
               render: bool = True, progress: bool = True, inputs: Sequence[str | Path] = (),
               extra: Mapping[str, object] | None = None, direction: str | None = None,
               formats: Sequence[str] = ("png",)) -> JSON:
    """The ``propagate run --points`` job: ``points.json`` (format: :mod:`propagate.keypoints`), ``overlay.mp4``,
    ``run_info.json`` and the ``.complete`` manifest, written whole into ``out_dir``.

    ``points`` is a points file (frame 0's points, or points on several keyframes:
    :func:`propagate.keypoints.read_point_keyframes`) or a :class:`PointSet` of the first frame; ``extra`` adds keys
    to ``points.json``. Keyframes other than frame 0 go through a :class:`propagate.session.Session`. ``formats``
    with ``coco`` adds ``coco_keypoints.json`` (:func:`propagate.coco.keypoints_json`).

    Returns a summary: ``{"frames", "points", "lost_last_frame", "out", "overlay", "features", "keyframes"}``.
    """
    source = open_video(video)
    if isinstance(points, PointSet):
        given, keyframes = points, {0: points.xy}
    else:
        given, keyframes = read_point_keyframes(points, source.names)
        for index, xy in keyframes.items():
            check_points_inside(PointSet(given.names, xy), source.native_size, f"{points} (frame {source.names[index]})")
    check_length(source)
    direction = direction or config.keyframes.direction
    _, backward = resolve_direction(direction, list(keyframes), len(source))
    formats = check_formats(formats)
    paths = [video, *([points] if not isinstance(points, PointSet) else []), *inputs]
    folder = ResultsFolder(out_dir, inputs=paths, overwrite=overwrite)
    extractor = extractor or build_extractor(config.features, config.extractor)
    check_processing_size(source, extractor, config.resize)
    text = extractor.describe()
    tracker: KeypointTracker | None = None
    if list(keyframes) == [0] and not backward:
        tracker = KeypointTracker(config.propagation, config.keypoints, source.native_size)
        stream: Iterable[tuple[Frame, np.ndarray, np.ndarray]] = track_points(source, given.xy, config, extractor,
                                                                            cache, progress, tracker)
    else:
        session = Session(source, config, extractor=extractor, cache=cache, progress=progress)
        for index, xy in keyframes.items():
            session.add_points(index, xy, given.names)
        stream = ((f, r.xy, np.array([r.confidence[n] for n in given.names]))
                  for f, (_, r) in zip(source, session.propagate(direction)))
    frames: list[JSON] = []
    with folder as out:
        writer = OverlayWriter(out / "overlay.mp4", source.fps, source.native_size) if render else None
        with writer or contextlib.nullcontext(), _closing(stream):
            for frame, xy, confidence in stream:
                frames.append({"index": frame.index, "name": frame.name,
                               "points": points_record(given.names, xy, confidence)})
                if writer is not None:
                    image = draw_points(frame.image, xy, given.names, given.edges, confidence)
                    writer.write(caption(image, f"{text} | frame {frame.index}"))
        tracked = tracker.tracked if tracker is not None else np.ones(len(given.names), bool)  # session: all inside
        assert tracked is not None
        atomic_write_json(out / "points.json", {
            "video": str(source.path),
            "size": list(source.native_size),
            "names": given.names,
            "edges": given.edge_names(),
            "tracked": [bool(v) for v in tracked],
            "features": text,
            "cell_convention": config.keypoints.cell_convention,
            "keyframes": [source.names[i] for i in keyframes],
            **(extra or {}),
            "frames": frames,
        })
        if "coco" in formats:
            coordinates = [(str(f["name"]), _xy_of(f["points"], given.names)) for f in frames]
            atomic_write_json(out / COCO_KEYPOINTS_JSON, keypoints_json(Path(source.path).stem, source.native_size,
                                                                        given.names, given.edges, coordinates))
        atomic_write_json(out / RUN_INFO, run_record(config, extractor, video=str(video), keyframes=list(keyframes),
                                                     points=str(points) if not isinstance(points, PointSet) else None))
        folder.summary = {"frames": len(frames), "points": len(given.names)}
    last = frames[-1]["points"]
    assert isinstance(last, dict)
    lost = sum(1 for p in last.values() if p["x"] is None)
    out = Path(out_dir)
    return {"frames": len(frames), "points": len(given.names), "lost_last_frame": lost, "out": str(out),
            "overlay": str(out / "overlay.mp4") if render else None, "features": text, "keyframes": list(keyframes)}


def _xy_of(record: object, names: Sequence[str]) -> np.ndarray:
    """``[J, 2]`` coordinates of one frame's points record (NaN for lost points)."""
    assert isinstance(record, dict)
    return np.array([[np.nan, np.nan] if record[n]["x"] is None else [record[n]["x"], record[n]["y"]] for n in names],
                    dtype=np.float64)


# ---------------------------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class Unit:
    """One video's run, as :func:`run_unit` does it: a mask (``kind="masks"``) or points job into ``out``.

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
    """Run one :class:`Unit` with :func:`run_video` or :func:`run_points` (with ``unit.config`` if it has one,
    else ``config``); returns its summary."""
    config = unit.config if unit.config is not None else config
    if unit.kind == "masks":
        assert not isinstance(unit.annotation, PointSet)
        return run_video(unit.video, unit.annotation, unit.out, config, extractor=extractor, cache=cache,
                         overwrite=overwrite, render=unit.render, progress=progress, inputs=unit.inputs)
    if unit.kind == "points":
        assert not isinstance(unit.annotation, np.ndarray)
        return run_points(unit.video, unit.annotation, unit.out, config, extractor=extractor, cache=cache,
                          overwrite=overwrite, render=unit.render, progress=progress, inputs=unit.inputs,
                          extra=unit.extra)
    raise ValueError(f"unknown unit kind {unit.kind!r}")


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
