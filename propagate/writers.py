"""The result writers: one table, :data:`WRITERS` (name -> :class:`Writer`), of the files a ``run`` writes.

=================  ==============  ======================  =========================================
writer             label kinds     file(s)                 written
=================  ==============  ======================  =========================================
``png``            masks           ``<frame>.png``         always (``--format png`` names it)
``confidence``     masks           ``confidence.csv``      always
``points``         points          ``points.json``         always
``coco``           masks           ``coco.json``           with ``--format coco``
``coco_keypoints`` points          ``coco_keypoints.json`` with ``--format coco``
``cvat``           masks           ``annotations.xml``     with ``--format cvat``
``cvat_points``    points          ``annotations.xml``     with ``--format cvat``
``overlay``        masks, points   ``overlay.mp4``         unless the run renders no video (``--no-video``)
=================  ==============  ======================  =========================================

A writer is one function ``open(run) -> context manager``: given the results being written (:class:`Run`: the
staging folder, the video, the label kind's codec, the tracks), it yields what to do with each frame's result, in
frame order; the code after its ``yield`` runs once every frame is written (and not at all if the run fails, so a
half-written file never reaches the results). A new format is one such function and one entry in :data:`WRITERS`::

    @contextlib.contextmanager
    def write_names(run: Run) -> Iterator[FrameWriter]:
        names: list[str] = []
        yield lambda frame, result: names.append(frame.name)
        atomic_write_text(run.out / "names.txt", "\\n".join(names) + "\\n")

    WRITERS["names"] = Writer(write_names, ("masks", "points"), "names.txt", format="names")

The CLI's ``--format`` values and their check (:func:`check_formats`), and the app's export (:func:`names_for`),
read this table. Heavy libraries (the PNG, COCO and video writers) are imported by the writers that use them, so
reading the table costs nothing at start-up.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Mapping, Sequence

from propagate.errors import PropagateError

if TYPE_CHECKING:
    import numpy as np

    from propagate.kinds import FrameResult, LabelKind, Track
    from propagate.labels import ObjectInfo
    from propagate.video import Frame, VideoSource

CONFIDENCE_CSV = "confidence.csv"
COCO_JSON = "coco.json"
COCO_KEYPOINTS_JSON = "coco_keypoints.json"
CVAT_XML = "annotations.xml"
POINTS_JSON = "points.json"
OVERLAY_MP4 = "overlay.mp4"


@dataclass(frozen=True)
class Run:
    """The results being written, as a writer sees them."""

    out: Path  # the folder being written (a staging folder: see propagate.runs.ResultsFolder)
    source: VideoSource  # the video: path, fps, native size (each frame's image comes with its result)
    kind: LabelKind  # the label kind's codec: draws a frame, names the points
    tracks: Sequence[Track]  # what confidences are reported for: object ids (masks), point names (points)
    text: str  # the features' description: the overlay's caption, points.json's "features"
    record: Mapping[str, object] = field(default_factory=dict)  # more keys for points.json: keyframes, extra
    objects: Mapping[int, ObjectInfo] = field(default_factory=dict)  # names and categories (default: object N)


FrameWriter = Callable[["Frame", "FrameResult"], None]  # what a writer does with one frame's result
Opener = Callable[[Run], ContextManager[FrameWriter]]


@dataclass(frozen=True)
class Writer:
    """One entry of :data:`WRITERS`: how to write a format, for which label kinds, and when."""

    open: Opener
    kinds: tuple[str, ...]  # the label kinds it serves (propagate.kinds.LabelKind.name)
    files: str  # what it writes, as --format's help names it
    format: str | None = None  # the --format value that asks for it (None: no value names it)
    always: bool = False  # written by every run of its kinds, whatever --format asks
    video: bool = False  # a rendered video: left out when the run renders none (--no-video)


# ---------------------------------------------------------------------------------------------- the writers


@contextlib.contextmanager
def write_png(run: Run) -> Iterator[FrameWriter]:
    """One indexed PNG per frame, named like the input frame (``<frame>.png``)."""
    from propagate import labels

    def write(frame: Frame, result: FrameResult) -> None:
        assert result.mask is not None
        labels.write_mask(run.out / f"{frame.name}.png", result.mask)

    yield write


@contextlib.contextmanager
def write_confidence(run: Run) -> Iterator[FrameWriter]:
    """``confidence.csv``: per frame its index (in the whole video), name, whether it is a keyframe, and each
    track's confidence (``absent`` for an object marked absent from the frame)."""
    from propagate.io import atomic_write_text

    rows = [["frame", "name", "keyframe", *[f"object_{t}" for t in run.tracks]]]

    def write(frame: Frame, result: FrameResult) -> None:
        rows.append([str(run.source.source_index(frame.index)), frame.name, str(int(result.keyframe)),
                     *[confidence_cell(result, t) for t in run.tracks]])

    yield write
    atomic_write_text(run.out / CONFIDENCE_CSV, "\n".join(",".join(r) for r in rows) + "\n")


def confidence_cell(result: FrameResult, track: Track) -> str:
    """A track's cell of ``confidence.csv``: ``absent``, or the confidence to 4 decimals (0 if it has none)."""
    return "absent" if track in result.absent else f"{result.confidence.get(track, 0.0):.4f}"


@contextlib.contextmanager
def write_coco(run: Run) -> Iterator[FrameWriter]:
    """``coco.json``: the masks as one video in the YouTube-VIS / COCO video layout (:mod:`propagate.coco`)."""
    from propagate.coco import CocoVideoWriter
    from propagate.io import atomic_write_json

    path = Path(run.source.path)
    objects = [int(t) for t in run.tracks]
    categories = {o: run.objects[o].category for o in objects if o in run.objects}
    coco = CocoVideoWriter(path.stem if path.suffix else path.name, run.source.native_size, objects, categories)

    def write(frame: Frame, result: FrameResult) -> None:
        assert result.mask is not None
        coco.add(frame.name, result.mask)

    yield write
    atomic_write_json(run.out / COCO_JSON, coco.to_json())


@contextlib.contextmanager
def write_points(run: Run) -> Iterator[FrameWriter]:
    """``points.json``: every frame's points with their confidences (format: :mod:`propagate.keypoints`)."""
    import numpy as np

    from propagate.io import atomic_write_json
    from propagate.keypoints import points_record
    from propagate.kinds import PointKind

    kind = run.kind
    assert isinstance(kind, PointKind)
    names = [str(t) for t in run.tracks]
    frames: list[dict[str, object]] = []

    def write(frame: Frame, result: FrameResult) -> None:
        assert result.xy is not None
        frames.append({"index": run.source.source_index(frame.index), "name": frame.name,
                       "points": points_record(names, result.xy, kind.confidences(result))})

    yield write
    tracked = kind.tracked if kind.tracked is not None else np.ones(len(names), bool)  # keyframes: all inside
    atomic_write_json(run.out / POINTS_JSON, {
        "video": str(run.source.path),
        "size": list(run.source.native_size),
        "names": names,
        "edges": [[names[a], names[b]] for a, b in kind.edges],
        "tracked": [bool(v) for v in tracked],
        "features": run.text,
        "cell_convention": kind.keypoints.cell_convention,
        **run.record,
        "frames": frames,
    })


@contextlib.contextmanager
def write_coco_keypoints(run: Run) -> Iterator[FrameWriter]:
    """``coco_keypoints.json``: one COCO image and keypoints annotation per frame (:mod:`propagate.coco`), with the
    coordinates as ``points.json`` rounds them."""
    from propagate.coco import keypoints_json
    from propagate.io import atomic_write_json
    from propagate.keypoints import points_record
    from propagate.kinds import PointKind

    kind = run.kind
    assert isinstance(kind, PointKind)
    names = [str(t) for t in run.tracks]
    coordinates: list[tuple[str, np.ndarray]] = []

    def write(frame: Frame, result: FrameResult) -> None:
        assert result.xy is not None
        coordinates.append((frame.name, _xy_of(points_record(names, result.xy, kind.confidences(result)), names)))

    yield write
    atomic_write_json(run.out / COCO_KEYPOINTS_JSON, keypoints_json(Path(run.source.path).stem, run.source.native_size,
                                                                    names, kind.edges, coordinates))


def _xy_of(record: Mapping[str, Mapping[str, float | None]], names: Sequence[str]) -> np.ndarray:
    """``[J, 2]`` coordinates of one frame's points record (NaN for lost points)."""
    import numpy as np

    return np.array([[np.nan, np.nan] if record[n]["x"] is None else [record[n]["x"], record[n]["y"]] for n in names],
                    dtype=np.float64)


def _video_name(run: Run) -> str:
    path = Path(run.source.path)
    return path.stem if path.suffix else path.name


@contextlib.contextmanager
def write_cvat(run: Run) -> Iterator[FrameWriter]:
    """``annotations.xml``: CVAT for video 1.1, one mask track per object, keyframes flagged (:mod:`propagate.cvat`)."""
    from propagate.cvat import CvatVideoWriter
    from propagate.io import atomic_write_bytes

    cvat = CvatVideoWriter(_video_name(run), run.source.native_size, [int(t) for t in run.tracks])

    def write(frame: Frame, result: FrameResult) -> None:
        assert result.mask is not None
        cvat.add(result.mask, result.keyframe, {int(k): v for k, v in result.confidence.items()})

    yield write
    atomic_write_bytes(run.out / CVAT_XML, cvat.to_xml())


@contextlib.contextmanager
def write_cvat_points(run: Run) -> Iterator[FrameWriter]:
    """``annotations.xml``: CVAT for video 1.1, one ``points`` track per point name, lost points outside, with the
    coordinates as ``points.json`` rounds them (:mod:`propagate.cvat`)."""
    from propagate.cvat import points_xml
    from propagate.io import atomic_write_bytes
    from propagate.keypoints import points_record
    from propagate.kinds import PointKind

    kind = run.kind
    assert isinstance(kind, PointKind)
    names = [str(t) for t in run.tracks]
    frames: list[np.ndarray] = []
    confidences: list[np.ndarray] = []
    keyframes: set[int] = set()

    def write(frame: Frame, result: FrameResult) -> None:
        assert result.xy is not None
        frames.append(_xy_of(points_record(names, result.xy, kind.confidences(result)), names))
        confidences.append(kind.confidences(result))
        if result.keyframe:
            keyframes.add(len(frames) - 1)

    yield write
    atomic_write_bytes(run.out / CVAT_XML, points_xml(_video_name(run), run.source.native_size, names, frames,
                                                      keyframes, confidences))


@contextlib.contextmanager
def write_overlay(run: Run) -> Iterator[FrameWriter]:
    """``overlay.mp4``: every frame with its result drawn by the label kind, captioned with the features used."""
    from propagate.render import OverlayWriter

    with OverlayWriter(run.out / OVERLAY_MP4, run.source.fps, run.source.native_size) as video:
        yield lambda frame, result: video.write(run.kind.draw(frame.image, result, run.text))


WRITERS: dict[str, Writer] = {
    "png": Writer(write_png, ("masks",), "<frame>.png", format="png", always=True),
    "confidence": Writer(write_confidence, ("masks",), CONFIDENCE_CSV, always=True),
    "points": Writer(write_points, ("points",), POINTS_JSON, always=True),
    "coco": Writer(write_coco, ("masks",), COCO_JSON, format="coco"),
    "coco_keypoints": Writer(write_coco_keypoints, ("points",), COCO_KEYPOINTS_JSON, format="coco"),
    "cvat": Writer(write_cvat, ("masks",), CVAT_XML, format="cvat"),
    "cvat_points": Writer(write_cvat_points, ("points",), CVAT_XML, format="cvat"),
    "overlay": Writer(write_overlay, ("masks", "points"), OVERLAY_MP4, always=True, video=True),
}


# ---------------------------------------------------------------------------------------------- reading the table


def format_names() -> tuple[str, ...]:
    """Every ``--format`` value, in table order."""
    return tuple(dict.fromkeys(w.format for w in WRITERS.values() if w.format is not None))


def names_for(kind: str) -> tuple[str, ...]:
    """The ``--format`` values that write something for label kind ``kind`` (``masks``, ``points``)."""
    return tuple(dict.fromkeys(w.format for w in WRITERS.values() if w.format is not None and kind in w.kinds))


def format_help() -> str:
    """What each ``--format`` value writes, and what is written anyway, for the CLI's help."""
    parts = []
    for value in format_names():
        files = [f"{w.files} ({', '.join(w.kinds)}{', always' if w.always else ''})"
                 for w in WRITERS.values() if w.format == value]
        parts.append(f"{value}: {', '.join(files)}")
    anyway = [f"{w.files} ({', '.join(w.kinds)}{'; not with --no-video' if w.video else ''})"
              for w in WRITERS.values() if w.format is None and w.always]
    return "; ".join(parts) + "; always written too: " + ", ".join(anyway)


def check_formats(asked: Sequence[str]) -> tuple[str, ...]:
    """The ``--format`` values asked for, checked against the table (each once, in the order given)."""
    known = format_names()
    bad = [f for f in asked if f not in known]
    if bad or not asked:
        raise PropagateError(f"format {', '.join(bad) or '(none)'}: choose from {', '.join(known)} "
                             f"(e.g. --format {','.join(known)})")
    return tuple(dict.fromkeys(asked))


def chosen(kind: str, asked: Sequence[str], render: bool) -> list[Writer]:
    """The writers a run of label kind ``kind`` uses: those that serve it and are always written or asked for by a
    ``--format`` value in ``asked``; rendered videos only if ``render``."""
    return [w for w in WRITERS.values()
            if kind in w.kinds and (w.always or w.format in asked) and (render or not w.video)]
