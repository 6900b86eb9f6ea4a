"""Rendering: masks blended in palette colours with contours, points with names and skeleton, captions, and the
H.264 mp4 writer that players open."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from propagate.io import atomic_path
from propagate.labels import DAVIS_PALETTE, VOID


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend objects of ``mask [H, W]`` onto ``image [H, W, 3]`` uint8 in DAVIS colours, with contours."""
    out = image.astype(np.float32)
    objects = (mask > 0) & (mask != VOID)
    colours = DAVIS_PALETTE[mask].astype(np.float32)
    out[objects] = (1 - alpha) * out[objects] + alpha * colours[objects]
    out = out.clip(0, 255).astype(np.uint8)
    for index in np.unique(mask[objects]):
        contours, _ = cv2.findContours((mask == index).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        colour = tuple(int(v) for v in DAVIS_PALETTE[index])
        cv2.drawContours(out, contours, -1, colour, thickness=2, lineType=cv2.LINE_AA)
    return out


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` at the top-left corner on a dark band (in place; returns the image)."""
    scale = max(0.4, image.shape[1] / 1600)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(image, (0, 0), (min(image.shape[1], tw + 8), th + base + 8), (0, 0, 0), thickness=-1)
    cv2.putText(image, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


# ---------------------------------------------------------------------------------------------- points


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


class OverlayWriter:
    """Write RGB frames to an H.264 mp4 (yuv420p), atomically: the file appears only when closed without error.

    >>> with OverlayWriter("out/overlay.mp4", fps=24, size_wh=(854, 480)) as video:
    ...     video.write(frame)  # [H, W, 3] uint8 RGB
    """

    def __init__(self, path: str | Path, fps: float, size_wh: tuple[int, int]):
        self.path = Path(path)
        self.fps = float(fps)
        self.size_wh = tuple(size_wh)
        self.frames = 0
        self._atomic = None
        self._writer = None

    def __enter__(self) -> "OverlayWriter":
        import imageio.v2 as imageio

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._writer = imageio.get_writer(
            str(tmp), format="FFMPEG", mode="I", fps=self.fps, codec="libx264", pixelformat="yuv420p",
            macro_block_size=1, ffmpeg_log_level="error", quality=7,
        )
        return self

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size_wh:
            raise ValueError(
                f"frame is {frame.shape[1]}x{frame.shape[0]}, the video {self.size_wh[0]}x{self.size_wh[1]}"
            )
        # yuv420p needs even sides: pad by one pixel where needed
        pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        self._writer.append_data(np.ascontiguousarray(frame))
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.close()
        finally:
            self._atomic.__exit__(exc_type, exc, tb)
