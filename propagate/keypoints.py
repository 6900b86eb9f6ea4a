"""Keypoints through a video: points given on the first frame, carried by label propagation (CRW protocol).

Points file
-----------
JSON (``.json``)::

    {"points": [{"name": "head", "x": 120.5, "y": 40}, {"name": "neck", "x": 118, "y": 62}],
     "edges":  [["head", "neck"]]}

- ``x``, ``y``: pixel coordinates in the first frame at its native size, 0-based, (0, 0) = the centre of the
  top-left pixel; every point must lie in the frame (``0 <= x <= W - 1``, ``0 <= y <= H - 1``).
- ``name``: unique; optional (points without one are called ``p1``, ``p2``, ... by position).
- ``edges``: optional skeleton, pairs of point names, drawn as lines in the overlay.
- ``"points"`` may also be a mapping ``{"head": [120.5, 40], ...}``.

CSV (``.csv``): one point per line, ``name,x,y``; a header line ``name,x,y`` and ``#`` comment lines are
allowed; no edges.

Output of :func:`run_points` (in ``--out``)
-------------------------------------------
``points.json``::

    {"video": "...", "size": [W, H], "names": ["head", ...], "edges": [["head", "neck"], ...],
     "features": "<extractor description>", "cell_convention": "centre",
     "frames": [{"index": 0, "name": "00000",
                 "points": {"head": {"x": 120.5, "y": 40.0, "confidence": 1.0}, ...}}, ...]}

``confidence`` is the peak of the point's propagated soft-label map (1 in the first frame, where the map peaks at
1; lower as the label spreads out or fades). A point whose map has faded to zero everywhere is lost: ``x`` and
``y`` are ``null`` and its confidence is 0. Also ``overlay.mp4`` (points in their colours, names and skeleton
over the frames), ``run_info.json`` (config, extractor settings, versions, command) and the ``.complete`` mark,
written last.

Labels and decoding (DESIGN section 5)
--------------------------------------
Each point becomes a Gaussian heatmap on the feature grid (``keypoints.sigma`` cells, value 1 at the cell
nearest the point, cells within ``floor(3 sigma)`` of that cell in x and in y), plus a background channel (channel
0) that is 1 where every point's map is 0 -- CRW's definition. After propagation, a point's position is the
weighted mean of its ``keypoints.decode_topk`` highest cells (weights = their values, normalised to 1; cells tied
with the k-th value are all kept, so a first-frame heatmap decodes to its peak cell, not to a sort's tie-break).

Grid convention: a native pixel coordinate ``x`` (0-based, pixel centres at integers) maps to the grid coordinate
``u = (x + 0.5) * w / W - 0.5``, so cell ``u`` stands for the centre of its ``stride x stride`` footprint (the
same alignment as cv2/PIL resizing). Decoding uses the inverse map. CRW instead uses ``u = x * w / W`` (cell =
top-left corner of its footprint); both are self-consistent, but CRW's sends the last few pixel columns/rows to a
cell outside the grid. Pass ``convention="crw"`` to the functions here to get CRW's mapping.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from propagate.config import Config, KeypointConfig, PropagationConfig
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.io import atomic_write_json, mark_complete, results_folder
from propagate.pipeline import RUN_INFO, check_length, iter_features, run_record
from propagate.propagation import LabelPropagator
from propagate.render import OverlayWriter, caption
from propagate.video import Frame, VideoSource, open_video

CONVENTIONS = ("centre", "crw")


@dataclass
class PointSet:
    """Named points of one frame: ``xy [J, 2]`` float (x, y) native pixels, and skeleton edges as index pairs."""

    names: list[str]
    xy: np.ndarray
    edges: list[tuple[int, int]] = field(default_factory=list)

    def edge_names(self) -> list[list[str]]:
        return [[self.names[a], self.names[b]] for a, b in self.edges]


# ---------------------------------------------------------------------------------------------- points files


def read_points(path: str | Path) -> PointSet:
    """Read a points file (JSON or CSV, see the module docstring); a PropagateError naming the file if bad."""
    path = Path(path)
    if not path.is_file():
        raise PropagateError(f"points file {path} does not exist: give a JSON or CSV file of first-frame points")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _parse_csv(path)
        names, xy, edges = [n for n, _, _ in rows], [(x, y) for _, x, y in rows], []
    elif suffix == ".json":
        names, xy, edges = _parse_json(path)
    else:
        raise PropagateError(f"points file {path}: unknown format {suffix or '(no suffix)'}; use .json or .csv")
    if not names:
        raise PropagateError(f"points file {path} lists no points: give at least one")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PropagateError(f"points file {path}: point name {name!r} is used twice; names must be unique")
        seen.add(name)
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for edge in edges:
        if not (isinstance(edge, (list, tuple)) and len(edge) == 2):
            raise PropagateError(f"points file {path}: edge {edge!r} is not a pair of point names like [\"head\", \"neck\"]")
        for end in edge:
            if not isinstance(end, str) or end not in index:
                raise PropagateError(
                    f"points file {path}: edge {list(edge)!r} names {end!r}, which is not a point; known: {', '.join(names)}"
                )
        pairs.append((index[edge[0]], index[edge[1]]))
    return PointSet(list(names), np.asarray(xy, dtype=np.float64).reshape(-1, 2), pairs)


def _number(value: Any, what: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PropagateError(f"points file {path}: {what} is {value!r}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise PropagateError(f"points file {path}: {what} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise PropagateError(f"points file {path}: {what} is {value!r}; give a finite pixel coordinate")
    return number


def _parse_json(path: Path) -> tuple[list[str], list[tuple[float, float]], list]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PropagateError(f"points file {path} is not valid JSON ({exc}); see the points format in the README") from None
    if isinstance(data, list):
        data = {"points": data}
    if not isinstance(data, dict) or "points" not in data:
        raise PropagateError(f"points file {path}: expected an object with a \"points\" list, e.g. "
                             '{"points": [{"name": "head", "x": 120, "y": 40}]}')
    points, edges = data["points"], data.get("edges") or []
    if not isinstance(edges, list):
        raise PropagateError(f"points file {path}: \"edges\" must be a list of [name, name] pairs")
    names: list[str] = []
    xy: list[tuple[float, float]] = []
    if isinstance(points, dict):
        for name, value in points.items():
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise PropagateError(f"points file {path}: point {name!r} is {value!r}; give [x, y]")
            names.append(str(name))
            xy.append((_number(value[0], f"x of {name!r}", path), _number(value[1], f"y of {name!r}", path)))
    elif isinstance(points, list):
        for i, item in enumerate(points):
            if not isinstance(item, dict) or "x" not in item or "y" not in item:
                raise PropagateError(f"points file {path}: point {i + 1} is {item!r}; give {{\"name\": ..., \"x\": ..., \"y\": ...}}")
            name = item.get("name", f"p{i + 1}")
            if not isinstance(name, str) or not name:
                raise PropagateError(f"points file {path}: point {i + 1} has name {name!r}; give a non-empty string")
            names.append(name)
            xy.append((_number(item["x"], f"x of {name!r}", path), _number(item["y"], f"y of {name!r}", path)))
    else:
        raise PropagateError(f"points file {path}: \"points\" must be a list of {{name, x, y}} objects")
    return names, xy, edges


def _parse_csv(path: Path) -> list[tuple[str, float, float]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise PropagateError(f"points file {path} is not a text file; give name,x,y lines") from None
    for lineno, row in enumerate(csv.reader(lines), start=1):
        if not row or all(not c.strip() for c in row) or row[0].strip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        if [c.lower() for c in cells] == ["name", "x", "y"]:
            continue
        if len(cells) != 3:
            raise PropagateError(f"points file {path}, line {lineno}: {','.join(row)!r} is not name,x,y")
        where = f"line {lineno}"
        rows.append((cells[0] or f"p{len(rows) + 1}", _number(cells[1], f"x on {where}", path),
                     _number(cells[2], f"y on {where}", path)))
    return rows


def check_points_inside(points: PointSet, size_wh: tuple[int, int], source: str | Path) -> None:
    """Every point must lie in the first frame (``0 <= x <= W - 1``, ``0 <= y <= H - 1``)."""
    width, height = size_wh
    for name, (x, y) in zip(points.names, points.xy):
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise PropagateError(
                f"points file {source}: point {name!r} at ({x:g}, {y:g}) is outside the first frame "
                f"({width}x{height}; x in 0..{width - 1}, y in 0..{height - 1}): give pixel coordinates in the frame"
            )


# ---------------------------------------------------------------------------------------------- grid mapping


def pixels_to_grid(
    xy: np.ndarray, native_wh: tuple[int, int], grid_hw: tuple[int, int], convention: str = "centre"
) -> np.ndarray:
    """Native pixel coordinates ``[..., 2]`` (x, y) -> grid coordinates ``[..., 2]`` (u, v) in cells."""
    scale = np.array([grid_hw[1] / native_wh[0], grid_hw[0] / native_wh[1]])
    xy = np.asarray(xy, dtype=np.float64)
    if convention == "centre":
        return (xy + 0.5) * scale - 0.5
    if convention == "crw":
        return xy * scale
    raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")


def grid_to_pixels(
    uv: np.ndarray, native_wh: tuple[int, int], grid_hw: tuple[int, int], convention: str = "centre"
) -> np.ndarray:
    """Inverse of :func:`pixels_to_grid`."""
    scale = np.array([native_wh[0] / grid_hw[1], native_wh[1] / grid_hw[0]])
    uv = np.asarray(uv, dtype=np.float64)
    if convention == "centre":
        return (uv + 0.5) * scale - 0.5
    if convention == "crw":
        return uv * scale
    raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")


# ---------------------------------------------------------------------------------------------- labels


def keypoint_heatmaps(uv: np.ndarray, grid_hw: tuple[int, int], sigma: float = 0.5) -> torch.Tensor:
    """Label maps of ``J`` points on an ``h x w`` grid: ``[1 + J, h, w]`` float32, channel 0 = background.

    Channel ``1 + j`` is a Gaussian of ``sigma`` cells centred on the cell nearest ``uv[j]`` (round half up), peak
    1, drawn on the cells within ``floor(3 sigma)`` of that cell in x and in y and clipped to the grid (a point
    off the grid may leave a partial map or none). A point with NaN coordinates gets an empty map. Background is
    1 where every point's map is 0, else 0 (CRW).

    Args:
        uv: ``[J, 2]`` grid coordinates (u = column, v = row), e.g. from :func:`pixels_to_grid`.
    """
    if sigma <= 0:
        raise PropagateError(f"keypoints.sigma must be positive, got {sigma}")
    h, w = grid_hw
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    maps = np.zeros((1 + len(uv), h, w), dtype=np.float32)
    reach = int(math.floor(3 * sigma))
    offsets = np.arange(-reach, reach + 1)
    bump = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma**2))  # [dy, dx]
    for j, (u, v) in enumerate(uv):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        cu, cv = int(math.floor(u + 0.5)), int(math.floor(v + 0.5))
        ys, xs = cv + offsets, cu + offsets
        ry = (ys >= 0) & (ys < h)
        rx = (xs >= 0) & (xs < w)
        if ry.any() and rx.any():
            maps[1 + j][np.ix_(ys[ry], xs[rx])] = bump[np.ix_(ry, rx)]
    maps[0] = (maps[1:].sum(axis=0) == 0).astype(np.float32)
    return torch.from_numpy(maps)


def decode_keypoints(
    soft: torch.Tensor, native_wh: tuple[int, int], topk: int = 3, convention: str = "centre"
) -> tuple[np.ndarray, np.ndarray]:
    """Point positions from soft labels.

    Args:
        soft: ``[1 + J, h, w]`` soft labels, channel 0 = background (ignored).
        native_wh: the frame's native (W, H); positions are returned in its pixels.
        topk: cells averaged per point (weights = their values normalised to 1). Cells tied with the k-th
            largest value are all kept (the rule of propagation's top-k), so the result never depends on how a
            sort breaks ties; without ties this is exactly CRW's top-k mean.

    Returns:
        ``xy [J, 2]`` float64 native pixels (NaN for a point whose map is all zero) and ``confidence [J]`` float64
        (the peak value of the point's map).
    """
    joints = soft[1:].detach().to("cpu", torch.float64)
    num, h, w = joints.shape
    flat = joints.reshape(num, h * w)
    k = min(int(topk), h * w)
    peak = flat.max(dim=1).values
    kth = torch.topk(flat, k, dim=1).values[:, -1:]
    kept = torch.where(flat >= kth, flat, torch.zeros((), dtype=flat.dtype))  # cells tied with the k-th stay in
    total = kept.sum(dim=1)
    weights = kept / torch.where(total > 0, total, torch.ones_like(total))[:, None]
    cells = torch.arange(h * w)
    u = (weights * (cells % w)).sum(dim=1)
    v = (weights * torch.div(cells, w, rounding_mode="floor")).sum(dim=1)
    xy = grid_to_pixels(torch.stack([u, v], dim=1).numpy(), native_wh, (h, w), convention)
    lost = (total <= 0).numpy()
    xy[lost] = np.nan
    confidence = peak.numpy().copy()
    confidence[lost] = 0.0
    return xy, confidence


# ---------------------------------------------------------------------------------------------- tracking


class KeypointTracker:
    """Carries points through a video one frame at a time (a :class:`LabelPropagator` plus label encode/decode).

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
        convention: str = "centre",
    ):
        if keypoints.decode_topk < 1:
            raise PropagateError(f"keypoints.decode_topk must be >= 1, got {keypoints.decode_topk}")
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")
        self.keypoints = keypoints
        self.native_wh = tuple(native_wh)
        self.convention = convention
        self.propagator = LabelPropagator(propagation, device=device)
        self.labels: torch.Tensor | None = None  # [1 + J, h, w] soft labels of the latest frame

    def start(self, feats: torch.Tensor, xy: np.ndarray) -> None:
        """Frame 0: features ``[C, h, w]`` and points ``[J, 2]`` in native pixels (NaN rows: no label)."""
        grid_hw = tuple(feats.shape[-2:])
        uv = pixels_to_grid(xy, self.native_wh, grid_hw, self.convention)
        self.labels = keypoint_heatmaps(uv, grid_hw, self.keypoints.sigma)
        self.propagator.start(feats, self.labels)

    def step(self, feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Points ``[J, 2]`` (NaN if lost) and confidences ``[J]`` of the next frame from its features ``[C, h, w]``."""
        self.labels = self.propagator.step(feats)
        return decode_keypoints(self.labels, self.native_wh, self.keypoints.decode_topk, self.convention)


def track_points(
    source: VideoSource,
    xy: np.ndarray,
    extractor: FeatureExtractor,
    config: Config,
    cache: Any = None,
    convention: str | None = None,
) -> Iterator[tuple[Frame, np.ndarray, np.ndarray]]:
    """Yield ``(frame, xy [J, 2], confidence [J])`` for every frame; frame 0 gives ``xy`` back with confidence 1.

    Features come from :func:`propagate.pipeline.iter_features` (resized per ``config.resize``); one frame flows
    through before the next is read.

    >>> for frame, xy, confidence in track_points(open_video("clip.mp4"), first_xy, extractor, config):
    ...     print(frame.index, xy[0], confidence[0])
    """
    convention = convention or cell_convention(config)
    tracker = KeypointTracker(config.propagation, config.keypoints, source.native_size, convention=convention)
    xy = np.asarray(xy, dtype=np.float64)
    for frame, feats in iter_features(source, extractor, config, cache):
        if frame.index == 0:
            tracker.start(feats, xy)
            yield frame, xy.copy(), np.where(np.isfinite(xy).all(axis=1), 1.0, 0.0)
        else:
            pred, confidence = tracker.step(feats)
            yield frame, pred, confidence


def cell_convention(config: Config) -> str:
    """The grid convention of ``config`` (``keypoints.cell_convention`` if the config has it, else ``centre``)."""
    return getattr(config.keypoints, "cell_convention", "centre")


# ---------------------------------------------------------------------------------------------- drawing


def point_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct RGB colours, hues evenly spread (point ``j`` always gets the same colour)."""
    hues = np.linspace(0, 180, num=max(count, 1), endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 230), np.full_like(hues, 255)], axis=1)[None]
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    return [tuple(int(c) for c in row) for row in rgb[:count]]


def draw_points(
    image: np.ndarray,
    xy: np.ndarray,
    names: Sequence[str] | None = None,
    edges: Sequence[tuple[int, int]] = (),
    confidence: np.ndarray | None = None,
) -> np.ndarray:
    """Draw points, their names and the skeleton on a copy of ``image`` ``[H, W, 3]`` uint8 RGB.

    Each point has its own colour (:func:`point_colours`); an edge takes the colour of its first point. Lost
    points (NaN) and edges touching them are not drawn; a point with confidence below 0.1 is drawn hollow.
    """
    canvas = np.ascontiguousarray(image.copy())
    height, width = canvas.shape[:2]
    unit = max(1, round(min(height, width) / 240))  # line width and radius scale with the frame
    colours = point_colours(len(xy))
    ok = np.isfinite(xy).all(axis=1)
    pix = [(int(round(x)), int(round(y))) if good else None for (x, y), good in zip(xy, ok)]
    for a, b in edges:
        if pix[a] is not None and pix[b] is not None:
            cv2.line(canvas, pix[a], pix[b], colours[a], 2 * unit, cv2.LINE_AA)
    for j, p in enumerate(pix):
        if p is None:
            continue
        faint = confidence is not None and confidence[j] < 0.1
        cv2.circle(canvas, p, 3 * unit, colours[j], unit if faint else -1, cv2.LINE_AA)
        cv2.circle(canvas, p, 3 * unit, (0, 0, 0), 1, cv2.LINE_AA)
        if names is not None:
            org = (p[0] + 4 * unit, p[1] - 2 * unit)
            cv2.putText(canvas, names[j], org, cv2.FONT_HERSHEY_SIMPLEX, 0.35 * unit, (0, 0, 0), 2 * unit, cv2.LINE_AA)
            cv2.putText(canvas, names[j], org, cv2.FONT_HERSHEY_SIMPLEX, 0.35 * unit, colours[j], unit, cv2.LINE_AA)
    return canvas


# ---------------------------------------------------------------------------------------------- the job


def points_record(names: Sequence[str], xy: np.ndarray, confidence: np.ndarray) -> dict[str, dict[str, Any]]:
    """One frame's points as written in ``points.json``: ``{name: {"x", "y", "confidence"}}`` (lost: nulls, 0)."""
    record = {}
    for name, (x, y), c in zip(names, np.asarray(xy, dtype=np.float64), confidence):
        if math.isfinite(x) and math.isfinite(y):
            record[name] = {"x": round(float(x), 3), "y": round(float(y), 3), "confidence": round(float(c), 5)}
        else:
            record[name] = {"x": None, "y": None, "confidence": 0.0}
    return record


def run_points(
    video: str | Path,
    points_path: str | Path,
    out_dir: str | Path,
    config: Config,
    *,
    extractor: FeatureExtractor | None = None,
    cache: Any = None,
    overwrite: bool = False,
    render: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """The ``propagate run --points`` job: ``points.json``, ``overlay.mp4``, ``run_info.json`` and ``.complete``.

    Inputs are checked before anything is written; if the run fails midway, the output folder is removed, so a
    folder with results is always complete.

    Args:
        video: a folder of frames or a video file.
        points_path: the first frame's points (JSON or CSV; see the module docstring).
        out_dir: output folder (must be empty unless ``overwrite``).
        config: run configuration (``configs/jhmdb_sd.yaml`` holds CRW's keypoint propagation settings).
        extractor: a built feature extractor; built from ``config`` if None.
        cache: a feature cache for :func:`propagate.pipeline.iter_features`, or None.
        render: write the overlay video. progress: show a progress bar.

    Returns:
        A summary: ``{"frames", "points", "lost_last_frame", "out", "overlay", "features"}``.
    """
    source = open_video(video)
    points = read_points(points_path)
    check_points_inside(points, source.native_size, points_path)
    check_length(source)
    extractor = extractor or build_extractor(config.features, config.extractor)
    text = extractor.describe()
    frames: list[dict[str, Any]] = []
    with results_folder(out_dir, overwrite) as out:
        overlay = OverlayWriter(out / "overlay.mp4", source.fps, source.native_size) if render else contextlib.nullcontext()
        with overlay as writer:
            stream = track_points(source, points.xy, extractor, config, cache)
            for frame, xy, confidence in tqdm(stream, total=len(source), desc=f"points {Path(source.path).name}",
                                              unit="frame", disable=not progress, leave=False, file=sys.stderr):
                frames.append({"index": frame.index, "name": frame.name,
                               "points": points_record(points.names, xy, confidence)})
                if writer is not None:
                    image = draw_points(frame.image, xy, points.names, points.edges, confidence)
                    writer.write(caption(image, f"{text} | frame {frame.index}"))
        atomic_write_json(out / "points.json", {
            "video": str(source.path),
            "size": list(source.native_size),
            "names": points.names,
            "edges": points.edge_names(),
            "features": text,
            "cell_convention": cell_convention(config),
            "frames": frames,
        })
        atomic_write_json(out / RUN_INFO, run_record(config, extractor, video=str(video), points=str(points_path)))
        lost = sum(1 for p in frames[-1]["points"].values() if p["x"] is None)
        mark_complete(out, {"frames": len(frames), "points": len(points.names)})
    return {"frames": len(frames), "points": len(points.names), "lost_last_frame": lost, "out": str(out),
            "overlay": str(out / "overlay.mp4") if render else None, "features": text}
