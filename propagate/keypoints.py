"""Keypoints: point files, and points <-> heatmap labels on the feature grid (CRW protocol, DESIGN section 5).

The stage that carries them through a video is :func:`propagate.pipeline.track_points`; the job that writes a
results folder is :func:`propagate.runs.run_points`.

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
allowed; no edges. Both are UTF-8, with or without a byte-order mark; CRLF line ends are fine. JSON nested deeper
than 100 levels is refused before it is parsed.

Output of ``propagate run --points`` (in ``--out``)
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

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from propagate.config import KeypointConfig
from propagate.errors import PropagateError
from propagate.io import loads_json
from propagate.options import check_field

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
    return read_points_from(names, xy, edges, path)


def read_points_from(names: Sequence[str], xy: Sequence[tuple[float, float]], edges: Sequence[object],
                     path: str | Path) -> PointSet:
    """A :class:`PointSet` from parsed names, coordinates and edges, checked (names unique, edges name points)."""
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
            raise PropagateError(
                f"points file {path}: edge {edge!r} is not a pair of point names like [\"head\", \"neck\"]"
            )
        for end in edge:
            if not isinstance(end, str) or end not in index:
                raise PropagateError(
                    f"points file {path}: edge {list(edge)!r} names {end!r}, which is not a point; "
                    f"known: {', '.join(names)}"
                )
        pairs.append((index[edge[0]], index[edge[1]]))
    return PointSet(list(names), np.asarray(xy, dtype=np.float64).reshape(-1, 2), pairs)


def _number(value: object, what: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PropagateError(f"points file {path}: {what} is {value!r}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise PropagateError(f"points file {path}: {what} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise PropagateError(f"points file {path}: {what} is {value!r}; give a finite pixel coordinate")
    return number


def _load_json(path: Path) -> dict[str, object]:
    try:
        data = loads_json(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) is allowed
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or nested too deeply
        raise PropagateError(
            f"points file {path} is not valid JSON ({exc}); see the points format in the README"
        ) from None
    if isinstance(data, list):
        data = {"points": data}
    if not isinstance(data, dict) or ("points" not in data and "keyframes" not in data):
        raise PropagateError(f"points file {path}: expected an object with a \"points\" list, e.g. "
                             '{"points": [{"name": "head", "x": 120, "y": 40}]}')
    return data


def _parse_json(path: Path) -> tuple[list[str], list[tuple[float, float]], list]:
    data = _load_json(path)
    if "points" not in data:
        raise PropagateError(f"points file {path} gives keyframes only: read it with read_point_keyframes")
    edges = data.get("edges") or []
    if not isinstance(edges, list):
        raise PropagateError(f"points file {path}: \"edges\" must be a list of [name, name] pairs")
    names, xy = _parse_points(data["points"], path, "")
    return names, xy, edges


def _parse_points(points: object, path: Path, where: str) -> tuple[list[str], list[tuple[float, float]]]:
    """Points as a list of ``{name, x, y}`` or a mapping ``{name: [x, y]}`` -> names and coordinates."""
    names: list[str] = []
    xy: list[tuple[float, float]] = []
    if isinstance(points, dict):
        for name, value in points.items():
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise PropagateError(f"points file {path}{where}: point {name!r} is {value!r}; give [x, y]")
            names.append(str(name))
            xy.append((_number(value[0], f"x of {name!r}", path), _number(value[1], f"y of {name!r}", path)))
    elif isinstance(points, list):
        for i, item in enumerate(points):
            if not isinstance(item, dict) or "x" not in item or "y" not in item:
                raise PropagateError(f"points file {path}{where}: point {i + 1} is {item!r}; "
                                     f"give {{\"name\": ..., \"x\": ..., \"y\": ...}}")
            name = item.get("name", f"p{i + 1}")
            if not isinstance(name, str) or not name:
                raise PropagateError(
                    f"points file {path}{where}: point {i + 1} has name {name!r}; give a non-empty string"
                )
            names.append(name)
            xy.append((_number(item["x"], f"x of {name!r}", path), _number(item["y"], f"y of {name!r}", path)))
    else:
        raise PropagateError(f"points file {path}{where}: \"points\" must be a list of {{name, x, y}} objects")
    return names, xy


def read_point_keyframes(path: str | Path, frame_names: Sequence[str]) -> tuple[PointSet, dict[int, np.ndarray]]:
    """Points given on several frames: ``(points of the first keyframe with names and edges, {frame: xy [J, 2]})``.

    A JSON file may add ``"keyframes": {"<frame name>": <points>, ...}`` (points as in ``"points"``) to, or instead
    of, ``"points"`` (which are frame 0's). Every keyframe must give the same point names (in any order). A CSV file
    or a JSON file without ``"keyframes"`` gives frame 0 only.
    """
    path = Path(path)
    data = _load_json(path) if path.suffix.lower() == ".json" and path.is_file() else {}
    if "keyframes" not in data:
        points = read_points(path)
        return points, {0: points.xy}
    keyframes = data["keyframes"]
    if not isinstance(keyframes, dict) or not keyframes:
        raise PropagateError(f"points file {path}: \"keyframes\" must map frame names to points, e.g. "
                             '{"00040": [{"name": "head", "x": 120, "y": 40}]}')
    index = {name: i for i, name in enumerate(frame_names)}
    given: dict[int, tuple[list[str], list[tuple[float, float]]]] = {}
    if "points" in data:
        given[0] = _parse_points(data["points"], path, "")
    for frame, points in keyframes.items():
        if str(frame) not in index:
            raise PropagateError(f"points file {path}: keyframe {frame!r} is not a frame of the video (frames are "
                                 f"{frame_names[0]} .. {frame_names[-1]}): name keyframes after their frames")
        given[index[str(frame)]] = _parse_points(points, path, f", keyframe {frame}")
    first = min(given)
    names = given[first][0]
    template = read_points_from(names, given[first][1], data.get("edges") or [], path)
    xy = {}
    for frame, (frame_points, coords) in sorted(given.items()):
        if sorted(frame_points) != sorted(names):
            raise PropagateError(
                f"points file {path}: keyframe {frame_names[frame]} gives points {', '.join(frame_points)} "
                f"but the first keyframe gives {', '.join(names)}: every keyframe gives the same points"
            )
        order = {n: c for n, c in zip(frame_points, coords)}
        xy[frame] = np.array([order[n] for n in names], dtype=np.float64)
    return template, xy


def _parse_csv(path: Path) -> list[tuple[str, float, float]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark and CRLF line ends are allowed
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
    check_points(points.names, points.xy, size_wh, f"points file {source}", "the first frame")


def check_points(names: Sequence[str], xy: np.ndarray, size_wh: tuple[int, int], where: str,
                 frame: str = "the frame") -> np.ndarray:
    """Points ``xy [J, 2]`` (native pixels, one per name) checked as a points file's are: finite, and inside
    ``frame`` of size ``size_wh`` (W, H). Returns them as float64 ``[J, 2]``; else a PropagateError starting with
    ``where``."""
    width, height = size_wh
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape != (len(names), 2):
        raise PropagateError(f"{where}: points of shape {list(xy.shape)} for {len(names)} names: give [J, 2] (x, y)")
    for name, (x, y) in zip(names, xy):
        if not (math.isfinite(x) and math.isfinite(y)):
            raise PropagateError(f"{where}: point {name!r} is at ({x:g}, {y:g}); give finite pixel coordinates")
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise PropagateError(
                f"{where}: point {name!r} at ({x:g}, {y:g}) is outside {frame} "
                f"({width}x{height}; x in 0..{width - 1}, y in 0..{height - 1}): give pixel coordinates in the frame"
            )
    return xy


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
    check_field(KeypointConfig, "sigma", sigma)
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


def points_record(names: Sequence[str], xy: np.ndarray, confidence: np.ndarray) -> dict[str, dict[str, float | None]]:
    """One frame's points as written in ``points.json``: ``{name: {"x", "y", "confidence"}}`` (lost: nulls, 0)."""
    record = {}
    for name, (x, y), c in zip(names, np.asarray(xy, dtype=np.float64), confidence):
        if math.isfinite(x) and math.isfinite(y):
            record[name] = {"x": round(float(x), 3), "y": round(float(y), 3), "confidence": round(float(c), 5)}
        else:
            record[name] = {"x": None, "y": None, "confidence": 0.0}
    return record
