"""CVAT for video 1.1 XML: propagated masks and points out as tracks, keyframes in from a task's tracks.

Export (``annotations.xml``, :class:`CvatVideoWriter` for masks, :func:`points_xml` for points): the task meta CVAT
writes (``size``, ``mode`` interpolation, ``labels``, one segment, ``original_size``), then one ``<track>`` per object
(label ``object-<id>`` unless a names map gives another) holding, from the object's first frame on, one shape per
frame: a ``<mask>`` in CVAT's run-length encoding (counts of alternating background/object runs, row-major over the
``left/top/width/height`` box of the object, starting with a background run, which is 0 when the first pixel is the
object's), ``outside="1"`` on frames where the object is absent (the geometry is the last one seen, as CVAT writes
it), ``keyframe="1"`` on the user's keyframes and ``0`` on propagated frames, and the object's confidence as a
``confidence`` attribute. Points: one ``<points>`` track per named point, ``outside="1"`` where it is lost. Nothing
in the file depends on the date or the machine: the same results give the same bytes.

Import (:func:`read_cvat_keyframes`, behind ``--mask annotations.xml`` or a CVAT export zip): propagate's keyframes
are the frames where some track has a shape with ``keyframe="1"`` and ``outside="0"``; each is a whole-frame mask
holding every track's shape on that frame (keyed or interpolated; CVAT's export writes every frame of a track), drawn
in ``z_order`` then track order. Masks are decoded, polygons and boxes (rotation included) and ellipses filled with
scikit-image (a pixel belongs to a shape when its centre lies inside). Labels become object ids: when every track's
label is ``object-<n>`` (what the export writes) n is the id, otherwise the tracks are numbered 1, 2, ... in the
order of their ids; a ``note:`` line says which. Anything ambiguous is a :class:`PropagateError`: a frame number
outside the video, a task or frame size other than the video's, a task made with a start frame or a frame step, a
shape type that is not an area (polyline, points, cuboid, skeleton), a track inside a keyframe without a shape
there, a DOCTYPE (entities are never expanded) or a file over :data:`MAX_XML_BYTES`.
"""
from __future__ import annotations

import math
import re
import sys
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, Sequence
from xml.parsers import expat

import numpy as np
from skimage import draw

from propagate.errors import PropagateError

MAX_XML_BYTES = 256 * 1024 * 1024  # an annotations file larger than this is refused (a tree of it fills memory)
MAX_OBJECTS = 254  # object ids fit a uint8 mask with 255 (void) kept apart
AREA_SHAPES = ("mask", "polygon", "box", "ellipse")
OBJECT_LABEL = re.compile(r"object-(\d+)")


def object_label(obj: int, names: Mapping[int, str] | None = None) -> str:
    """The CVAT label of object ``obj``: its name from ``names``, else ``object-<obj>``."""
    return (names or {}).get(obj, f"object-{obj}")


# ---------------------------------------------------------------------------------------------- CVAT's mask RLE


def encode_rle(binary: np.ndarray) -> tuple[list[int], int, int, int, int]:
    """A binary mask ``[H, W]`` (not empty) -> ``(counts, left, top, width, height)`` in CVAT's mask encoding: run
    lengths over the object's bounding box, row-major, alternating background and object, background first."""
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    if rows.size == 0:
        raise ValueError("an empty mask has no CVAT encoding")
    top, left = int(rows[0]), int(cols[0])
    height, width = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    flat = binary[top:top + height, left:left + width].astype(bool).ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return [int(c) for c in counts], left, top, width, height


def decode_rle(counts: Sequence[int], width: int, height: int) -> np.ndarray:
    """CVAT mask run lengths -> a binary box ``[height, width]`` bool (see :func:`encode_rle`)."""
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    if flat.size != width * height:
        raise ValueError(f"the run lengths add up to {flat.size} pixels, not {width}x{height}")
    return flat.reshape(height, width)


# ---------------------------------------------------------------------------------------------- export


def _meta(name: str, size_wh: tuple[int, int], num_frames: int, labels: Sequence[str],
          confidence: bool) -> ET.Element:
    """The ``<version>`` and ``<meta>`` of a CVAT for video 1.1 task (no dates or owner: reproducible bytes)."""
    meta = ET.Element("meta")
    task = ET.SubElement(meta, "task")
    for key, value in (("id", "0"), ("name", name), ("size", str(num_frames)), ("mode", "interpolation"),
                       ("overlap", "0"), ("bugtracker", ""), ("flipped", "False"), ("start_frame", "0"),
                       ("stop_frame", str(max(num_frames - 1, 0))), ("frame_filter", "")):
        ET.SubElement(task, key).text = value
    labels_el = ET.SubElement(task, "labels")
    for label in labels:
        label_el = ET.SubElement(labels_el, "label")
        ET.SubElement(label_el, "name").text = label
        ET.SubElement(label_el, "type").text = "any"
        attributes = ET.SubElement(label_el, "attributes")
        if confidence:
            attribute = ET.SubElement(attributes, "attribute")
            for key, value in (("name", "confidence"), ("mutable", "True"), ("input_type", "number"),
                               ("default_value", "0"), ("values", "0\n1\n0.0001")):
                ET.SubElement(attribute, key).text = value
    segment = ET.SubElement(ET.SubElement(task, "segments"), "segment")
    for key, value in (("id", "0"), ("start", "0"), ("stop", str(max(num_frames - 1, 0))), ("url", "")):
        ET.SubElement(segment, key).text = value
    original = ET.SubElement(task, "original_size")
    ET.SubElement(original, "width").text = str(size_wh[0])
    ET.SubElement(original, "height").text = str(size_wh[1])
    return meta


def _document(meta: ET.Element, tracks: Sequence[ET.Element]) -> bytes:
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    root.append(meta)
    root.extend(tracks)
    ET.indent(root, space="  ")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode").encode("utf-8") + b"\n"


@dataclass
class _MaskTrack:
    shapes: list[dict[str, str]] = field(default_factory=list)
    last: dict[str, str] | None = None  # geometry of the last frame where the object was present


class CvatVideoWriter:
    """Collects one video's masks frame by frame, then :meth:`to_xml` the CVAT for video 1.1 document (bytes).

    ``object_ids`` are the objects to write (one track each, in id order); ``names`` maps an id to its CVAT label
    (default ``object-<id>``); ``num_frames`` is the video's length when fewer frames are added (keyframes only).
    """

    def __init__(self, name: str, size_wh: tuple[int, int], object_ids: Sequence[int],
                 names: Mapping[int, str] | None = None, num_frames: int | None = None):
        self.name = name
        self.num_frames = num_frames
        self.size_wh = (int(size_wh[0]), int(size_wh[1]))
        self.object_ids = sorted(int(o) for o in object_ids)
        self.labels = {o: object_label(o, names) for o in self.object_ids}
        self.tracks = {o: _MaskTrack() for o in self.object_ids}
        self.frames = 0
        self.with_confidence = False

    def add(self, mask: np.ndarray, keyframe: bool = False, confidence: Mapping[int, float] | None = None,
            absent: Collection[int] = (), frame: int | None = None) -> None:
        """Add the next frame: its mask ``[H, W]`` uint8 (object indices), whether it is a user keyframe, the
        objects' confidence, and objects known to be absent (``outside`` even where they have pixels; by default
        an object is absent where it has no pixel). ``frame``: its number, when frames are skipped (default: the
        one after the last added)."""
        frame = self.frames if frame is None else int(frame)
        if frame < self.frames:
            raise ValueError(f"frame {frame} comes after frame {self.frames - 1}: add frames in order")
        self.frames = frame + 1
        self.with_confidence |= confidence is not None
        for obj, track in self.tracks.items():
            binary = mask == obj
            present = obj not in absent and bool(binary.any())
            if present:
                counts, left, top, width, height = encode_rle(binary)
                track.last = {"rle": ", ".join(map(str, counts)), "left": str(left), "top": str(top),
                              "width": str(width), "height": str(height)}
            elif track.last is None:
                continue  # the track starts on the object's first frame
            shape = {"frame": str(frame), "keyframe": str(int(keyframe)), "outside": str(int(not present)),
                     "occluded": "0", **track.last, "z_order": "0"}
            if confidence is not None and present:
                shape["confidence"] = f"{float(confidence.get(obj, 0.0)):.4f}"
            track.shapes.append(shape)

    def to_xml(self) -> bytes:
        tracks = []
        for number, (obj, track) in enumerate(self.tracks.items()):
            if not track.shapes:
                continue
            track_el = ET.Element("track", {"id": str(number), "label": self.labels[obj], "source": "auto"})
            for shape in track.shapes:
                attrs = {k: v for k, v in shape.items() if k != "confidence"}
                shape_el = ET.SubElement(track_el, "mask", attrs)
                if "confidence" in shape:
                    ET.SubElement(shape_el, "attribute", {"name": "confidence"}).text = shape["confidence"]
            tracks.append(track_el)
        labels = [self.labels[o] for o in self.object_ids]
        meta = _meta(self.name, self.size_wh, max(self.frames, self.num_frames or 0), labels, self.with_confidence)
        return _document(meta, tracks)


def points_xml(name: str, size_wh: tuple[int, int], point_names: Sequence[str], frames: Sequence[np.ndarray],
               keyframes: Collection[int] = (), confidence: Sequence[np.ndarray] | None = None) -> bytes:
    """CVAT for video 1.1 of tracked points: one ``points`` track per point name (its label), from the point's first
    frame on, ``outside="1"`` where it is lost. ``frames`` are ``xy [J, 2]`` per frame (NaN rows: lost),
    ``keyframes`` the frame indices the user annotated, ``confidence`` ``[J]`` per frame."""
    tracks = []
    for j, point in enumerate(point_names):
        track_el = ET.Element("track", {"id": str(j), "label": point, "source": "auto"})
        last: str | None = None
        for frame, xy in enumerate(frames):
            x, y = (float(v) for v in np.asarray(xy, dtype=np.float64)[j])
            present = math.isfinite(x) and math.isfinite(y)
            if present:
                last = f"{x:.2f},{y:.2f}"
            elif last is None:
                continue
            shape_el = ET.SubElement(track_el, "points", {
                "frame": str(frame), "keyframe": str(int(frame in keyframes)), "outside": str(int(not present)),
                "occluded": "0", "points": last, "z_order": "0"})
            if confidence is not None and present:
                ET.SubElement(shape_el, "attribute", {"name": "confidence"}).text = f"{float(confidence[frame][j]):.4f}"
        if len(track_el):
            tracks.append(track_el)
    return _document(_meta(name, size_wh, len(frames), list(point_names), confidence is not None), tracks)


# ---------------------------------------------------------------------------------------------- import


@dataclass(frozen=True)
class Shape:
    """One shape of a track as the file gives it: its tag (mask, polygon, box, ...), frame, flags and attributes."""

    kind: str
    frame: int
    outside: bool
    keyframe: bool
    z_order: int
    attrib: Mapping[str, str]


@dataclass(frozen=True)
class Track:
    id: int
    label: str
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class CvatVideo:
    """A parsed CVAT for video 1.1 document: the task's frame count and frame size where its meta gives them, the
    meta's start frame and frame filter, and the tracks."""

    size: int | None
    size_wh: tuple[int, int] | None
    start_frame: int
    frame_filter: str
    tracks: tuple[Track, ...]


@dataclass(frozen=True)
class CvatKeyframes:
    """Keyframes read from a CVAT file: whole-frame masks ``{frame index: [H, W] uint8}``, the objects marked outside
    by a keyframe (``{frame index: {object}}``, for per-object absences), the track -> object map, and the note."""

    masks: dict[int, np.ndarray]
    outside: dict[int, set[int]]
    objects: dict[int, int]
    note: str


def _parse_xml(data: bytes, source: str) -> ET.Element:
    """Parse XML with expat into an ElementTree element, refusing any DOCTYPE (so no entity is ever declared or
    expanded: no billion laughs, no external entities)."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()

    def refuse(*_: object) -> None:
        raise PropagateError(f"CVAT file {source} declares a DOCTYPE: CVAT never writes one; give the annotations.xml "
                             "CVAT exported")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise PropagateError(f"CVAT file {source} is not well-formed XML ({exc}): export it again from CVAT") from None
    return builder.close()


def read_cvat_bytes(path: str | Path) -> bytes:
    """The annotations XML of ``path``: an XML file, or a CVAT export zip (its ``annotations.xml``, or its only XML
    file), each at most :data:`MAX_XML_BYTES`."""
    path = Path(path)
    limit = f"{MAX_XML_BYTES // (1024 * 1024)} MiB"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            xmls = [i for i in archive.infolist() if i.filename.lower().endswith(".xml") and not i.is_dir()]
            chosen = [i for i in xmls if i.filename == "annotations.xml"] or xmls
            if len(chosen) != 1:
                raise PropagateError(f"CVAT zip {path} holds {len(xmls)} XML files and no annotations.xml at its top: "
                                     "give the zip CVAT exported (CVAT for video 1.1) or its annotations.xml")
            if chosen[0].file_size > MAX_XML_BYTES:
                raise PropagateError(f"{chosen[0].filename} in {path} is over {limit}: split the task into jobs")
            with archive.open(chosen[0]) as file:
                data = file.read(MAX_XML_BYTES + 1)
    else:
        if path.stat().st_size > MAX_XML_BYTES:
            raise PropagateError(f"CVAT file {path} is over {limit}: split the task into jobs")
        data = path.read_bytes()
    if len(data) > MAX_XML_BYTES:
        raise PropagateError(f"CVAT file {path} is over {limit}: split the task into jobs")
    return data


def _int(value: str | None, what: str, source: str) -> int:
    try:
        return int(float(value)) if value is not None else 0
    except ValueError:
        raise PropagateError(f"CVAT file {source}: {what} {value!r} is not a number") from None


def parse_cvat_video(data: bytes, source: str) -> CvatVideo:
    """Parse a CVAT for video 1.1 document (``source`` names it in errors)."""
    root = _parse_xml(data, source)
    if root.tag != "annotations":
        raise PropagateError(f"CVAT file {source} has <{root.tag}> at its root, not <annotations>: "
                             "give a CVAT XML file")
    version = root.findtext("version")
    if version is not None and version.strip() != "1.1":
        raise PropagateError(f"CVAT file {source} is version {version.strip()}: export it as CVAT for video 1.1")
    if root.find("image") is not None:
        raise PropagateError(f"CVAT file {source} is CVAT for images (it has <image> elements): export the task as "
                             "CVAT for video 1.1, whose tracks carry the frames")
    task = root.find("meta/task")
    if task is None:
        task = root.find("meta/job")
    size = size_wh = None
    start_frame, frame_filter = 0, ""
    if task is not None:
        if task.findtext("size") is not None:
            size = _int(task.findtext("size"), "task size", source)
        original = task.find("original_size")
        if original is not None:
            size_wh = (_int(original.findtext("width"), "width", source),
                       _int(original.findtext("height"), "height", source))
        start_frame = _int(task.findtext("start_frame"), "start_frame", source)
        frame_filter = (task.findtext("frame_filter") or "").strip()
    tracks = []
    for track_el in root.iter("track"):
        shapes = []
        for el in track_el:
            if el.tag == "attribute":
                continue
            shapes.append(Shape(el.tag, _int(el.get("frame"), "frame", source), el.get("outside") == "1",
                                el.get("keyframe") == "1", _int(el.get("z_order"), "z_order", source),
                                dict(el.attrib)))
        tracks.append(Track(_int(track_el.get("id"), "track id", source), track_el.get("label", ""), tuple(shapes)))
    return CvatVideo(size, size_wh, start_frame, frame_filter, tuple(tracks))


def _floats(text: str | None, what: str, source: str) -> np.ndarray:
    try:
        values = [float(v) for v in re.split(r"[;,]", text or "") if v.strip()]
    except ValueError:
        raise PropagateError(f"CVAT file {source}: {what} {text!r} is not a list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise PropagateError(f"CVAT file {source}: {what} {text!r} holds a value that is not finite")
    return np.asarray(values, dtype=np.float64)


def rasterise(shape: Shape, size_wh: tuple[int, int], source: str) -> np.ndarray:
    """The pixels ``[H, W]`` bool of one area shape (mask, polygon, box, ellipse) on a frame of ``size_wh``; a pixel
    belongs to a polygon, box or ellipse when its centre lies inside."""
    width, height = size_wh
    out = np.zeros((height, width), dtype=bool)
    a = shape.attrib
    where = f"CVAT file {source}: the {shape.kind} on frame {shape.frame}"
    if shape.kind == "mask":
        left, top = _int(a.get("left"), "left", source), _int(a.get("top"), "top", source)
        w, h = _int(a.get("width"), "width", source), _int(a.get("height"), "height", source)
        if w < 1 or h < 1 or left < 0 or top < 0 or left + w > width or top + h > height:
            raise PropagateError(f"{where} covers x {left}..{left + w - 1}, y {top}..{top + h - 1}, outside the "
                                 f"{width}x{height} frame: export the task again from CVAT")
        counts = _floats(a.get("rle"), "rle", source)
        if (counts < 0).any() or (counts != np.round(counts)).any():
            raise PropagateError(f"{where} has run lengths that are not whole numbers")
        try:
            out[top:top + h, left:left + w] = decode_rle(counts.astype(np.int64).tolist(), w, h)
        except ValueError as exc:
            raise PropagateError(f"{where}: {exc}") from None
        return out
    if shape.kind == "ellipse":
        cx, cy, rx, ry = (float(_floats(a.get(k), k, source)[0]) if a.get(k) else math.nan
                          for k in ("cx", "cy", "rx", "ry"))
        if not all(map(math.isfinite, (cx, cy, rx, ry))):
            raise PropagateError(f"{where} lacks cx, cy, rx or ry")
        rotation = math.radians(float(a.get("rotation", 0) or 0))
        # skimage turns (rows, cols) counter-clockwise; CVAT turns clockwise on screen (y down): the same sense
        rr, cc = draw.ellipse(cy - 0.5, cx - 0.5, ry, rx, shape=(height, width), rotation=-rotation)
        out[rr, cc] = True
        return out
    if shape.kind == "box":
        values = [a.get(k) for k in ("xtl", "ytl", "xbr", "ybr")]
        if None in values:
            raise PropagateError(f"{where} lacks xtl, ytl, xbr or ybr")
        xtl, ytl, xbr, ybr = (float(_floats(v, "box", source)[0]) for v in values)
        xy = np.array([[xtl, ytl], [xbr, ytl], [xbr, ybr], [xtl, ybr]])
        angle = math.radians(float(a.get("rotation", 0) or 0))
        if angle:
            centre = xy.mean(axis=0)
            turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            xy = (xy - centre) @ turn.T + centre
    else:  # polygon
        xy = _floats(a.get("points"), "points", source)
        if xy.size < 6 or xy.size % 2:
            raise PropagateError(f"{where} needs at least three x,y points")
        xy = xy.reshape(-1, 2)
    rr, cc = draw.polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(height, width))
    out[rr, cc] = True
    return out


def _object_map(tracks: Sequence[Track]) -> tuple[dict[int, int], str]:
    """Track id -> object id, and how (for the note line)."""
    found = [OBJECT_LABEL.fullmatch(t.label) for t in tracks]
    ids = [int(m.group(1)) if m else 0 for m in found]
    if all(found) and all(1 <= i <= MAX_OBJECTS for i in ids) and len(set(ids)) == len(ids):
        return {t.id: i for t, i in zip(tracks, ids)}, "labels object-<n> give the object ids"
    if len(tracks) > MAX_OBJECTS:
        raise PropagateError(f"the CVAT file has {len(tracks)} tracks: at most {MAX_OBJECTS} objects fit a mask")
    ordered = sorted(tracks, key=lambda t: t.id)
    mapping = {t.id: n for n, t in enumerate(ordered, start=1)}
    return mapping, "tracks numbered in id order: " + ", ".join(f"track {t.id} ({t.label}) -> {mapping[t.id]}"
                                                                for t in ordered)


def cvat_keyframes(video: CvatVideo, num_frames: int, size_wh: tuple[int, int], source: str) -> CvatKeyframes:
    """The keyframes of a parsed CVAT document for a video of ``num_frames`` frames of ``size_wh`` (see the module
    docstring for the rules and the errors)."""
    width, height = size_wh
    if video.size_wh is not None and tuple(video.size_wh) != (width, height):
        raise PropagateError(f"CVAT file {source} is for {video.size_wh[0]}x{video.size_wh[1]} frames but the video's "
                             f"are {width}x{height}: give the video the CVAT task was made from")
    if video.start_frame != 0 or video.frame_filter:
        raise PropagateError(f"CVAT file {source} comes from a task made with start frame {video.start_frame} and "
                             f"frame filter {video.frame_filter!r}: its frame numbers are not the video's; make the "
                             "task from the whole video (start 0, no step), or give propagate the same frames")
    if video.size is not None and video.size != num_frames:
        raise PropagateError(f"CVAT file {source} is for a task of {video.size} frames but the video has {num_frames}: "
                             "give the video the CVAT task was made from")
    tracks = [t for t in video.tracks if t.shapes]
    if not tracks:
        raise PropagateError(f"CVAT file {source} has no track: annotate the objects as tracks in CVAT and export "
                             "CVAT for video 1.1")
    for track in tracks:
        for shape in track.shapes:
            if not 0 <= shape.frame < num_frames:
                raise PropagateError(f"CVAT file {source}: track {track.id} ({track.label}) has a shape on frame "
                                     f"{shape.frame}, outside the video's frames 0..{num_frames - 1}")
            if shape.kind not in AREA_SHAPES:
                raise PropagateError(f"CVAT file {source}: track {track.id} ({track.label}) is made of {shape.kind} "
                                     f"shapes (frame {shape.frame}), which are not areas: propagate reads masks, "
                                     "polygons, boxes and ellipses (keypoints: --points)")
    objects, how = _object_map(tracks)
    keyed = sorted({s.frame for t in tracks for s in t.shapes if s.keyframe and not s.outside})
    if not keyed:
        raise PropagateError(f"CVAT file {source} has no keyframe shape inside the frame (keyframe=\"1\", "
                             "outside=\"0\"): key at least one object on one frame in CVAT")
    masks: dict[int, np.ndarray] = {}
    for frame in keyed:
        drawn: list[tuple[int, int, np.ndarray]] = []
        for order, track in enumerate(tracks):
            here = [s for s in track.shapes if s.frame == frame]
            if len(here) > 1:
                raise PropagateError(f"CVAT file {source}: track {track.id} ({track.label}) has {len(here)} shapes on "
                                     f"frame {frame}: a track holds one shape per frame")
            if not here:
                before = [s for s in track.shapes if s.frame < frame]
                if before and not max(before, key=lambda s: s.frame).outside:
                    raise PropagateError(f"CVAT file {source}: track {track.id} ({track.label}) is inside frame "
                                         f"{frame} (a keyframe of another track) but has no shape there: export the "
                                         "task from CVAT (it writes every frame of a track), or mark it outside")
                continue
            if not here[0].outside:
                drawn.append((here[0].z_order, order, rasterise(here[0], size_wh, source) * objects[track.id]))
        mask = np.zeros((height, width), dtype=np.uint8)
        for _, _, layer in sorted(drawn, key=lambda d: (d[0], d[1])):
            mask = np.where(layer > 0, layer, mask).astype(np.uint8)
        masks[frame] = mask
    outside: dict[int, set[int]] = {}
    for track in tracks:
        for shape in track.shapes:
            if shape.keyframe and shape.outside:
                outside.setdefault(shape.frame, set()).add(objects[track.id])
    note = (f"{len(tracks)} CVAT tracks -> objects ({how}); keyframes on frames "
            + ", ".join(map(str, keyed)))
    if outside:
        note += (f"; {sum(map(len, outside.values()))} outside keyframes not used (an object simply has no pixels on "
                 "later keyframes)")
    return CvatKeyframes(masks, outside, objects, note)


def read_cvat_keyframes(path: str | Path, names: Sequence[str], size_wh: tuple[int, int]) -> dict[int, np.ndarray]:
    """Keyframe masks ``{frame index: [H, W] uint8}`` of a CVAT for video 1.1 file (``annotations.xml`` or the
    export zip) for a video whose frames are ``names`` at ``size_wh``; prints one ``note:`` line on stderr saying
    how tracks became objects and which frames are keyframes."""
    read = cvat_keyframes(parse_cvat_video(read_cvat_bytes(path), str(path)), len(names), size_wh, str(path))
    print(f"note: {path}: {read.note}", file=sys.stderr)
    return read.masks


def is_cvat_file(path: str | Path) -> bool:
    """Whether ``--mask`` names a CVAT file (by its suffix: ``.xml``, or ``.zip`` for CVAT's export)."""
    return Path(path).suffix.lower() in (".xml", ".zip")
